"""Exceptions raised by xent, named after TensorFlow's (`tf.errors`)."""


class InvalidArgumentError(ValueError):
    """An argument has a bad value: mirrors `tf.errors.InvalidArgumentError`.

    TensorFlow raises it when an op rejects its input at run time, e.g. a label
    outside ``[0, num_classes)``. Here it also subclasses `ValueError`, so code
    that catches either keeps working. `message` holds the text, as in TF.
    """

    # (no __init__ of its own: torch.compile's dynamo cannot trace the
    # super().__init__ call of one, and replaced the message with its own)
    @property
    def message(self):
        """The error's text, as TF's ``InvalidArgumentError.message``: the one argument,
        or the third of TF's ``(node_def, op, message)``."""
        if len(self.args) >= 3:
            return self.args[2]
        return self.args[0] if self.args else ""

    @message.setter
    def message(self, text):
        self.args = (*self.args[:2], text) if len(self.args) >= 3 else (text,)

    def __str__(self):
        return str(self.message)


class InvalidDTypeError(InvalidArgumentError, TypeError):
    """An array has a dtype the op does not accept.

    TensorFlow reports this as `InvalidArgumentError`; Python code expects a
    `TypeError`. This class is both.
    """
