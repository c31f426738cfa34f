"""Arguments as torch's argument parser takes them, for the functions that mirror torch's: the
same values accepted, and torch's TypeError (its words) for the rest."""

import numbers
import operator

import torch


def torch_int(function, name, position, value):
    """value as an int argument of torch's: an int or an integer that converts to one (a numpy
    integer, a 0-dim integer tensor); not a bool, a float or a tensor of more dimensions."""
    accepted = not isinstance(value, bool)
    if isinstance(value, torch.Tensor):
        accepted = value.dim() == 0 and not (value.is_floating_point() or value.is_complex()
                                             or value.dtype == torch.bool)
    if accepted:
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{function}(): argument '{name}' (position {position}) must be int, not "
                    f"{type(value).__name__}")


def torch_float(function, name, position, value):
    """value as a float (or Scalar) argument of torch's: a real number (a bool and numpy scalars
    included) or a 0-dim tensor, returned as it is; not None, a string or a tensor with
    dimensions, which reach our ops' schema as a RuntimeError or are taken by float()."""
    if isinstance(value, numbers.Real) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        return value
    raise TypeError(f"{function}(): argument '{name}' (position {position}) must be float, not "
                    f"{type(value).__name__}")


def torch_bool(function, name, position, value):
    """value as a bool argument of torch's: a bool, not a number or None."""
    if isinstance(value, bool):
        return value
    raise TypeError(f"{function}(): argument '{name}' (position {position}) must be bool, not "
                    f"{type(value).__name__}")


def check_dropout_p(p):
    """torch's dropout check of p, made when a Dropout module is built and on every call."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def torch_shape(function, normalized_shape):
    """normalized_shape as torch.nn.functional's layer_norm and rms_norm take it: a list or tuple
    (torch.Size) of ints, not one int (their modules accept an int; the functions raise torch's
    TypeError) nor an array or tensor."""
    def wrong(what):
        return TypeError(f"{function}(): argument 'normalized_shape' (position 2) must be tuple "
                         f"of ints, {what}")

    if not isinstance(normalized_shape, (list, tuple)):
        raise wrong(f"not {type(normalized_shape).__name__}")
    for pos, size in enumerate(normalized_shape):
        # An int (a SymInt under torch.compile), a numpy integer or a 0-dim integer tensor; types
        # only: converting a size (operator.index) would make torch.compile specialize on it.
        integral = isinstance(size, (numbers.Integral, torch.SymInt)) or (
            isinstance(size, torch.Tensor) and size.dim() == 0
            and not (size.is_floating_point() or size.is_complex() or size.dtype == torch.bool))
        if isinstance(size, bool) or not integral:
            raise wrong(f"but found element of type {type(size).__name__} at pos {pos}")
    return tuple(normalized_shape)
