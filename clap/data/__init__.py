"""Data: sources and adapters, the manifest, normalisation, captions, shards, validation."""
