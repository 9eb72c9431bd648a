"""Small real models trained on scikit-learn's digits, and the code that builds them."""
