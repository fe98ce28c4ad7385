"""Retrieval: dense (Chroma), lexical (BM25 over jieba tokens) and their reciprocal-rank fusion."""
