"""The bottom layer every package may import and that imports nothing of ours: the error
hierarchy, content hashing, atomic file writes, device resolution."""
