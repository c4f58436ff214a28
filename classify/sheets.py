"""The audit's contact sheets: the top duplicate pairs side by side, the top label suspects."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from extract.notices import plural


def _thumb(ax, in_dir: Path, rel: str, available: bool, size: int = 160) -> None:
    from extract.files import fs_path
    from extract.load import ImageError, load_image

    ax.set_xticks([])
    ax.set_yticks([])
    if available:
        try:  # upright, RGB, centre-cropped: the image as the CNN saw it
            ax.imshow(load_image(fs_path(in_dir, rel), size))
            return
        except ImageError:
            pass
    ax.text(0.5, 0.5, f"image not available:\n{in_dir / rel}", ha="center", va="center",
            fontsize=7, wrap=True, transform=ax.transAxes)


def _short(path: str, n: int = 38) -> str:
    return path if len(path) <= n else "..." + path[-(n - 3):]


def _pair_sheet(plt, in_dir: Path, available: bool, dup_table: pd.DataFrame, top: int):
    pairs = dup_table.head(top)
    n = max(len(pairs), 1)
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 3.0 * n), squeeze=False)
    if pairs.empty:
        for ax in axes[0]:
            ax.axis("off")
        axes[0, 0].text(0.5, 0.5, "no duplicate pairs found", ha="center", va="center")
    for r, row in enumerate(pairs.itertuples(index=False)):
        for c, side in enumerate("ab"):
            path, label, role = getattr(row, f"path_{side}"), getattr(row, f"label_{side}"), getattr(row, f"role_{side}")
            _thumb(axes[r, c], in_dir, path, available)
            axes[r, c].set_title(f"{label} ({role})\n{_short(path)}", fontsize=8)
        flags = [row.kind] + (["crosses splits"] if row.cross_split else []) + \
                (["labels disagree"] if row.label_disagree else [])
        axes[r, 0].set_ylabel(f"#{r + 1} cos {row.similarity:.5f}\n{', '.join(flags)}", fontsize=8)
    fig.suptitle(f"the top {len(pairs)} of {plural(len(dup_table), 'duplicate pair')}", fontsize=10)
    fig.tight_layout()
    return fig


def _suspect_sheet(plt, in_dir: Path, available: bool, suspects: pd.DataFrame, top: int):
    sus = suspects.head(top)
    cols = 4
    nrows = max(1, -(-len(sus) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.8 * cols, 3.5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if sus.empty:
        axes[0, 0].text(0.5, 0.5, "no label suspects found", ha="left", va="center")
    for k, row in enumerate(sus.itertuples(index=False)):
        ax = axes.ravel()[k]
        ax.axis("on")
        _thumb(ax, in_dir, row.path, available)
        ax.set_title(f"#{row.rank} labelled {row.label}\nlooks like {row.suggested_label} "
                     f"(p={row.p_suggested:.2f})\n{_short(row.path, 30)}", fontsize=7)
    fig.suptitle(f"the top {len(sus)} of {plural(len(suspects), 'label suspect')}", fontsize=10)
    fig.tight_layout()
    return fig


def contact_sheets(in_dir, out: Path, dup_table: pd.DataFrame, suspects: pd.DataFrame, top: int,
                   log=print) -> list[str]:
    """Writes ``duplicates.png`` (pairs side by side) and ``label_suspects.png``; returns the names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    in_dir = Path(in_dir)
    available = in_dir.is_dir()
    if not available:
        log(f"note: IN={in_dir} is not available; the contact sheets show paths instead of images")
    written = []
    for name, fig in (("duplicates.png", _pair_sheet(plt, in_dir, available, dup_table, top)),
                      ("label_suspects.png", _suspect_sheet(plt, in_dir, available, suspects, top))):
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        written.append(name)
    return written
