"""Video clips as TFRecord SequenceExamples: dataset conversion and tf.data input."""
