"""FAISS look-alike search over a bundle's normalised embeddings."""
