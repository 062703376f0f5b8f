"""An offline ipywidgets browser of SAE features: pick a feature, read its top contexts and the tokens it promotes."""
from __future__ import annotations

import html
from collections.abc import Sequence

import torch

from helpers import validate
from helpers.errors import MicroscopeError
from helpers.features import FeatureActs, promoted_tokens, top_contexts
from helpers.sae import SAE


class FeatureBrowserError(MicroscopeError):
    """Bad input to the feature browser."""


def feature_card(model, sae: SAE, tokens: list[torch.Tensor], acts: FeatureActs, feature: int, k: int = 8,
                 label: str = "") -> str:
    """HTML for one feature: how often it fires, its top contexts (one row each, token highlighted), promoted tokens."""
    fired = int(acts.fired()[feature])
    table = top_contexts(model, tokens, acts, feature, k=k)
    rows = []
    for row in table.itertuples():
        before = html.escape(row.context[:row.context.rindex("[")])
        rows.append(f'<tr class="context"><td style="text-align:right;padding-right:8px">{row.activation:.2f}</td>'
                    f'<td>{before}<b style="background:#fdd49e">{html.escape(row.token)}</b></td></tr>')
    up, down = promoted_tokens(model, sae, feature, k=8)
    words = lambda items: ", ".join(f"<code>{html.escape(repr(t))}</code>" for t in items)  # noqa: E731
    title = f"feature {feature}" + (f": {html.escape(label)}" if label else "")
    return (f"<div><b>{title}</b> (a label is a hypothesis) &middot; active on {fired} of {len(acts.doc)} tokens"
            f"<table style='font-family:monospace;font-size:12px'>{''.join(rows) or '<tr><td>never active</td></tr>'}"
            f"</table><div>promotes: {words(up)}</div><div>suppresses: {words(down)}</div></div>")


def feature_browser(model, sae: SAE, tokens: list[torch.Tensor], acts: FeatureActs, features: Sequence[int],
                    labels: dict[int, str] | None = None, k: int = 8):
    """A dropdown over `features` and the chosen feature's card (see :func:`feature_card`); all cards built up front."""
    import ipywidgets as widgets

    features = [validate.index(f, "features", sae.d_sae, "features", allow_negative=False) for f in features]
    if not features:
        raise FeatureBrowserError("`features` is empty: give at least one feature index to browse.")
    if len(tokens) != int(acts.doc.max()) + 1:
        raise FeatureBrowserError(f"`acts` encodes {int(acts.doc.max()) + 1} documents but `tokens` has {len(tokens)}: "
                                  "pass the token lists the activations were computed from.")
    labels = labels or {}
    cards = {f: feature_card(model, sae, tokens, acts, f, k=k, label=labels.get(f, "")) for f in features}
    options = [(f"{f}" + (f" ({labels[f]})" if f in labels else ""), f) for f in features]
    choice = widgets.Dropdown(options=options, value=features[0], description="feature")
    card = widgets.HTML(cards[features[0]], layout=widgets.Layout(max_width="760px"))
    choice.observe(lambda change: setattr(card, "value", cards[change["new"]]), names="value")
    browser = widgets.VBox([widgets.HTML(f"<b>Feature browser</b>: {sae.d_sae} features at {html.escape(sae.hook)}"),
                            choice, card])
    browser.add_class("feature-browser")  # the browser test finds the widget by this class
    return browser
