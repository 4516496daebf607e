"""Small helpers shared across kcap."""


def count(number: int, noun: str, plural: str | None = None) -> str:
    """`number` and `noun`, in the plural unless it is one: `count(1, "epoch")` → `"1 epoch"`."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
