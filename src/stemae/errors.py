"""Exceptions that carry a message meant for the user."""


class InputError(ValueError):
    """Input data or options that stemae cannot use; the message names the problem."""
