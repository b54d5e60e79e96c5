"""The converter's pattern table (spectriton.registry): the patterns convert tries, in
order, and a pattern registered there is tried on every container like the built-in ones."""

from torch import nn

import spectriton as st
from spectriton.registry import PATTERNS, register
from spectriton.report import PlanRow
from spectriton.rewrite import join


def test_the_table_holds_the_built_in_patterns_in_the_order_they_are_tried():
    assert list(PATTERNS) == ["dense block", "pool", "chain", "convolution"]
    assert [p.name for p in PATTERNS.values() if p.whole] == ["dense block"]


def test_a_registered_pattern_rewrites_what_it_matches_and_reports_it():
    saved = dict(PATTERNS)
    try:

        @register("dropout")
        class Dropout:
            @staticmethod
            def match(analysis, site):
                found = [name for name, child in site.module.named_children() if type(child) is nn.Dropout]
                return found or None

            @staticmethod
            def rewrite(analysis, site, names):
                for name in names:
                    site.edit.swaps[name] = nn.Identity()
                    row = PlanRow(join(site.fqn, name), "Dropout", "identity", "a test pattern")
                    analysis.rows.append(row)

        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Dropout(), nn.Conv2d(4, 4, 3, padding=1))
        rows = {row.name: row.action for row in st.plan(model, activation=None)}
        assert rows == {"0": "spectral conv", "1": "identity", "2": "spectral conv"}
        st.convert(model, activation=None)
        assert type(model[1]) is nn.Identity and isinstance(model[0], st.SpectralConv2d)
    finally:
        PATTERNS.clear()
        PATTERNS.update(saved)
    assert list(PATTERNS) == list(saved)
