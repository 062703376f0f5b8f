"""Interactive views (ipywidgets only, so they work offline with no CDN).

`attention_explorer(model, prompt)` runs the prompt once, caches every layer's pattern, and lets you
pick a layer, a head and a query token. It shows the head's pattern as a heatmap (the chosen query's
row boxed) and the prompt as text in which each token's background is the attention the query pays
it. Hovering a token in the text shows that token's own attention instead (pure CSS, no JavaScript),
so the view keeps working in a notebook rendered from saved widget state.
"""
from __future__ import annotations

import html
import io
import uuid

import torch

from helpers.errors import MicroscopeError

_RGB = "33, 113, 181"  # the dark end of matplotlib's "Blues", so text and heatmap agree
_MIN_SHOWN = 0.01  # attention below this is not drawn in the text view (keeps the CSS small)


class ExplorerError(MicroscopeError):
    """A layer, head or query position the explorer cannot show."""


def _check_choice(what: str, value: int, low: int, high: int) -> int:
    if not isinstance(value, int) or not low <= value <= high:
        raise ExplorerError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def heatmap_png(pattern: torch.Tensor, str_tokens: list[str], query: int, title: str) -> bytes:
    """PNG of one head's pattern [q, k] with the query's row boxed."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from helpers.attention import plot_pattern

    size = min(7.0, 2.5 + 0.17 * len(str_tokens))
    fig = Figure(figsize=(size + 0.8, size), dpi=80)
    ax = fig.add_subplot()
    plot_pattern(pattern, str_tokens, ax=ax, title=title)
    ax.add_patch(Rectangle((-0.5, query - 0.5), len(str_tokens), 1, fill=False, edgecolor="tab:orange", linewidth=2))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def token_html(pattern: torch.Tensor, str_tokens: list[str], query: int, uid: str) -> str:
    """The prompt as HTML: backgrounds show the query's attention; hovering a token shows its own row."""
    n = len(str_tokens)
    rules = [
        f"#{uid} .tok {{padding: 1px 0; border-radius: 3px; white-space: pre; font-family: monospace; cursor: default}}",
        f"#{uid} .q{query} {{outline: 2px solid orange}}",
        # While any token is hovered, forget the chosen query so only the hovered row shows.
        f"#{uid} .strip:has(.tok:hover) .tok {{background: transparent; outline: none}}",
        f"#{uid} .strip .tok:hover {{outline: 2px solid orange}}",
    ]
    for key in range(query + 1):
        weight = float(pattern[query, key])
        if weight >= _MIN_SHOWN:
            rules.append(f"#{uid} .k{key} {{background: rgba({_RGB}, {weight:.2f})}}")
    for q in range(n):
        for key in range(q + 1):
            weight = float(pattern[q, key])
            if weight >= _MIN_SHOWN:
                rules.append(f"#{uid} .strip:has(.q{q}:hover) .k{key} {{background: rgba({_RGB}, {weight:.2f})}}")
    spans = []
    for pos, token in enumerate(str_tokens):
        tip = f"position {pos} {token!r}; attention from the chosen query: {float(pattern[query, pos]):.2f}"
        spans.append(f'<span class="tok q{pos} k{pos}" title="{html.escape(tip)}">{html.escape(token, quote=False)}</span>')
    chosen = html.escape(repr(str_tokens[query]), quote=False)
    top = pattern[query, : query + 1].topk(min(3, query + 1))
    strongest = ", ".join(f"{html.escape(repr(str_tokens[int(k)]), quote=False)} ({float(w):.2f})" for w, k in zip(top.values, top.indices))
    return (f'<div id="{uid}"><style>{"".join(rules)}</style>'
            f'<div style="font-size: 90%; margin-bottom: 4px">Query {query} {chosen} attends most to {strongest}. '
            "Blue: attention paid by the query (boxed in orange). Hover a token to see where it attends.</div>"
            f'<div class="strip" style="line-height: 1.9; max-width: 640px">{"".join(spans)}</div></div>')


def attention_explorer(model, prompt: str, layer: int = 0, head: int = 0, query: int | None = None):
    """An ipywidgets view of every head's pattern on `prompt`: layer, head and query sliders, heatmap, token text."""
    import ipywidgets as widgets

    from helpers.tokens import run_with_cache

    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    _, cache, tokens = run_with_cache(model, prompt, names=[f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)])
    patterns = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"][0] for i in range(n_layers)])  # [layer, head, q, k]
    str_tokens = model.to_str_tokens(tokens[0])
    n_pos = len(str_tokens)
    if n_pos < 2:
        raise ExplorerError("the prompt needs at least one token after BOS for a pattern to show anything")
    _check_choice("layer", layer, 0, n_layers - 1)
    _check_choice("head", head, 0, n_heads - 1)
    query = n_pos - 1 if query is None else _check_choice("query", query, 0, n_pos - 1)
    uid = f"attn-{uuid.uuid4().hex[:8]}"

    layer_slider = widgets.IntSlider(value=layer, min=0, max=n_layers - 1, description="layer", continuous_update=False)
    head_slider = widgets.IntSlider(value=head, min=0, max=n_heads - 1, description="head", continuous_update=False)
    query_slider = widgets.IntSlider(value=query, min=0, max=n_pos - 1, description="query", continuous_update=False)
    query_label = widgets.Label()
    heatmap = widgets.Image(format="png", layout=widgets.Layout(max_width="520px"))
    text = widgets.HTML(layout=widgets.Layout(max_width="660px"))

    def redraw(_=None) -> None:
        l, h, q = layer_slider.value, head_slider.value, query_slider.value
        pattern = patterns[l, h]
        query_label.value = f"= {str_tokens[q]!r}"
        heatmap.value = heatmap_png(pattern, str_tokens, q, f"{model.cfg.model_name}: head {l}.{h}")
        text.value = token_html(pattern, str_tokens, q, uid)

    for slider in (layer_slider, head_slider, query_slider):
        slider.observe(redraw, names="value")
    redraw()
    controls = widgets.HBox([layer_slider, head_slider, widgets.HBox([query_slider, query_label])])
    explorer = widgets.VBox([widgets.HTML(f"<b>Attention explorer</b>: {html.escape(model.cfg.model_name)}, {n_pos} tokens"), controls, text, heatmap])
    explorer.add_class("attention-explorer")  # the browser test finds the widget by this class
    return explorer
