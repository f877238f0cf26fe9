"""Exceptions raised by xent, named after TensorFlow's (`tf.errors`)."""


class InvalidArgumentError(ValueError):
    """An argument has a bad value: mirrors `tf.errors.InvalidArgumentError`.

    TensorFlow raises it when an op rejects its input at run time, e.g. a label
    outside ``[0, num_classes)``. Here it also subclasses `ValueError`, so code
    that catches either keeps working. `message` holds the text, as in TF.
    """

    def __init__(self, *args, node_def=None, op=None, message=None):
        """``InvalidArgumentError(message)``, or TF's ``(node_def, op, message)``,
        positional or by name."""
        # (no super().__init__ call: torch.compile's dynamo cannot trace one, and
        # replaced the message with its own; BaseException.__new__ set args)
        if message is not None:
            self.args = (node_def, op, message, *args)

    @property
    def node_def(self):
        """TF's ``node_def``: the first of three arguments, else None."""
        return self.args[0] if len(self.args) >= 3 else None

    @property
    def op(self):
        """TF's ``op``: the second of three arguments, else None."""
        return self.args[1] if len(self.args) >= 3 else None

    @property
    def error_code(self):
        """TF's code of this error, ``INVALID_ARGUMENT`` (3)."""
        return 3

    @property
    def message(self):
        """The error's text, as TF's ``InvalidArgumentError.message``: the one argument,
        or the third of TF's ``(node_def, op, message)``."""
        if len(self.args) >= 3:
            return self.args[2]
        return self.args[0] if self.args else ""

    @message.setter
    def message(self, text):
        self.args = (*self.args[:2], text, *self.args[3:]) if len(self.args) >= 3 else (text,)

    def __str__(self):
        return str(self.message)


class InvalidDTypeError(InvalidArgumentError, TypeError):
    """An array has a dtype the op does not accept.

    TensorFlow reports this as `InvalidArgumentError`; Python code expects a
    `TypeError`. This class is both.
    """
