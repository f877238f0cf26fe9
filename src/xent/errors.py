"""Exceptions raised by xent, named after TensorFlow's (`tf.errors`)."""


class InvalidArgumentError(ValueError):
    """An argument has a bad value: mirrors `tf.errors.InvalidArgumentError`.

    TensorFlow raises it when an op rejects its input at run time, e.g. a label
    outside ``[0, num_classes)``. Here it also subclasses `ValueError`, so code
    that catches either keeps working. `message` holds the text, as in TF.
    """

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class InvalidDTypeError(InvalidArgumentError, TypeError):
    """An array has a dtype the op does not accept.

    TensorFlow reports this as `InvalidArgumentError`; Python code expects a
    `TypeError`. This class is both.
    """
