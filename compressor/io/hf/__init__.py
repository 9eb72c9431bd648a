"""Hugging Face model directories: files (no transformers needed), the working model's wrapper, the loader."""
