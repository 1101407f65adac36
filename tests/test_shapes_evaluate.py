"""The model card's tables, from measured rows."""

from sdcli.shapes.evaluate import Scores, card_tables


def test_card_tables_show_each_measurement_with_its_sample_size():
    scores = [Scores(cfg=7.5, images=108, colour=0.96, shape=0.9, background=1.0, all=0.87, diversity=0.18, seconds=61)]
    negatives = [{"prompt": "a blue square", "neg": "white background", "unwanted": "white background", "count": 1,
                  "of": 24}]  # fmt: skip
    curve = [{"step": 500, "minutes": 12.4, "images": 54, "colour": 0.5, "shape": 0.25, "background": 1.0}]
    steering = [{"method": "classifier", "scale": 10.0, "images": 144, "colour": 0.85, "diversity": 0.316}]
    tables = card_tables(scores, negatives, curve, steering)
    assert "| 7.5 | 108 | 96% | 90% | 100% | 87% | 0.180 | 61 |" in tables
    assert "| a blue square | white background | white background | 1 of 24 |" in tables
    assert "| 500 | 12 | 54 | 50% | 25% | 100% |" in tables
    assert "| classifier | 10 | 144 | 85% | 0.316 |" in tables
