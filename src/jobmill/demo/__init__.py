"""Demo handlers that show what jobmill is for; `make run` serves them."""
