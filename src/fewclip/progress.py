"""Progress bars: one shape for every epoch loop (the loop on cached features, captioning's)."""

from __future__ import annotations

from tqdm.auto import tqdm


def epoch_bar(done: int, epochs: int, desc: str, progress: bool) -> "tqdm[int]":
    """The epochs ``done`` .. ``epochs`` - 1 as a bar that starts at ``done`` (a resumed run) and is cleared when it
    ends; ``progress`` False: no bar."""
    return tqdm(
        range(done, epochs), initial=done, total=epochs, desc=desc, unit="epoch", leave=False, disable=not progress
    )
