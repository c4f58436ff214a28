"""The notices every command prints (classes, split-like names, random weights), for stage 2.

They live in :mod:`extract.notices` so that both stages say the same words.
"""

from extract.notices import (SHOWN_CLASSES, SPLIT_LIKE, class_counts_line, plural,  # noqa: F401
                             random_weights_banner, split_like, split_like_warning)
