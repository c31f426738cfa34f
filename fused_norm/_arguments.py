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


def torch_shape(function, normalized_shape):
    """normalized_shape as torch.nn.functional's layer_norm and rms_norm take it: a sequence of
    ints, not one int (their modules accept an int; the functions raise torch's TypeError)."""
    if isinstance(normalized_shape, numbers.Integral):
        raise TypeError(f"{function}(): argument 'normalized_shape' (position 2) must be tuple of "
                        f"ints, not {type(normalized_shape).__name__}")
    return tuple(normalized_shape)
