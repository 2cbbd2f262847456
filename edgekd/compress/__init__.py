"""Compression of trained models: pruning (structured, unstructured, N:M) with KD recovery."""
