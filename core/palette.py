"""Class colours for masks and legends."""

from __future__ import annotations

# Distinct colours for up to 12 classes (a colour-blind-aware qualitative set),
# repeated beyond that.
_QUALITATIVE = (
    (166, 206, 227), (31, 120, 180), (178, 223, 138), (51, 160, 44), (251, 154, 153),
    (227, 26, 28), (253, 191, 111), (255, 127, 0), (202, 178, 214), (106, 61, 154),
    (255, 255, 153), (177, 89, 40),
)


def default_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` RGB colours for classes without colours of their own."""
    return [_QUALITATIVE[i % len(_QUALITATIVE)] for i in range(n)]
