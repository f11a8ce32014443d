"""Image corpora: a generated seed-quality corpus for tests and the docs."""
