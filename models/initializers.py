"""JAX-style truncated-normal initialisation, the one every HRM weight uses."""
import math

import torch


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Fill `tensor` in place with a normal cut at [lower, upper] standard deviations.

    Unlike `torch.nn.init.trunc_normal_`, the scale is corrected for the cut so that the standard
    deviation of the result equals `std`. `std == 0` gives zeros.
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        # Variance of a unit normal truncated to [lower, upper]: 1 - (b*phi(b) - a*phi(a))/Z - ((phi(a) - phi(b))/Z)^2.
        cdf_lower = math.erf(lower / math.sqrt(2))
        cdf_upper = math.erf(upper / math.sqrt(2))
        mass = (cdf_upper - cdf_lower) / 2
        pdf_lower = math.exp(-0.5 * lower ** 2) / math.sqrt(2 * math.pi)
        pdf_upper = math.exp(-0.5 * upper ** 2) / math.sqrt(2 * math.pi)
        truncated_variance = 1 - (upper * pdf_upper - lower * pdf_lower) / mass - ((pdf_lower - pdf_upper) / mass) ** 2
        scale = std / math.sqrt(truncated_variance)
        # Inverse-CDF sampling: uniform in erf space, mapped back through erfinv.
        tensor.uniform_(cdf_lower, cdf_upper)
        tensor.erfinv_()
        tensor.mul_(math.sqrt(2) * scale)
        tensor.clamp_(lower * scale, upper * scale)
    return tensor
