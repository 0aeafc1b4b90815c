"""Keras layers of SELFY."""
