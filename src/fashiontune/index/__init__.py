"""`fashiontune index build`: embed a catalogue once with the eval job's embedding path and write an index
directory (embeddings, item metadata with each image's place in its shard, a faiss index) that
`fashiontune serve` searches. Layout: see build.py."""
