"""Training and evaluation of selfy-tf models with Keras `model.fit`."""
