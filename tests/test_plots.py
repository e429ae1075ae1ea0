"""The training-curve chart (curves.plot_runs) on run folders written here: one pair of panels per phase name,
each on its own steps; one colour per run in every panel and in the bar chart; the parts of the test rows told
apart by hatching; every printed value legible."""
import json
import math

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from sasrecllm_jax.plots import curves, style as plot_style, warm_cold  # noqa: E402


def part(auc, n=100):
    return {"auc": auc, "uauc": auc, "logloss": 0.6, "n": n}


def fake_run(folder, phases: dict[str, int], test: dict | None, shift: float = 0.0):
    """A run folder as train.py leaves it: metrics.jsonl with a loss every 10 steps and five evaluations per
    phase ({phase: steps}), and results.json with `test` (none: an unfinished run)."""
    folder.mkdir(parents=True)
    rows = []
    for phase, steps in phases.items():
        for step in range(10, steps + 1, 10):
            loss = 0.7 * math.exp(-step / steps) + 0.05 * math.sin(step) + shift
            rows.append({"time": 0, "kind": "train", "phase": phase, "step": step, "loss": loss})
        for k in range(5):
            rows.append({"time": 0, "kind": "eval", "phase": phase, "step": k * steps // 4,
                         "all/auc": 0.6 + 0.02 * k + shift})
        rows.append({"time": 0, "kind": "timing", "phase": phase, "step": steps})
    rows.append({"time": 0, "kind": "final", "phase": "test", "step": 0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if test is not None:
        (folder / "results.json").write_text(json.dumps({"test": test}))
    return folder


OLD = {"all": part(0.70), "warm": part(0.72), "cold": part(0.66)}
NEW = {**OLD, "new_user": part(0.68, 60), "new_item": part(0.61, 40)}


def by_label(fig) -> dict:
    return {ax.get_label(): ax for ax in fig.axes}


def test_each_phase_has_its_own_panels_and_steps(tmp_path):
    """A 3000-step SASRec phase does not squash a 200-step LLM phase: each phase name has a loss and a
    validation AUC panel, on its own step axis."""
    runs = [fake_run(tmp_path / "sasrec", {"sasrec": 3000}, OLD),
            fake_run(tmp_path / "hybrid", {"sasrec": 3000, "text_lora": 200, "mapper": 200}, NEW, shift=0.01)]
    fig = curves.draw_runs(runs)
    axes = by_label(fig)
    assert set(axes) == {f"{kind} {phase}" for kind in ("loss", "valid_auc") for phase in ("sasrec", "text_lora",
                                                                                        "mapper")} | {"test_auc",
                                                                                                      "legend"}
    assert axes["loss text_lora"].get_xlim()[1] < 300 < 3000 < axes["loss sasrec"].get_xlim()[1]
    assert axes["valid_auc text_lora"].get_xlim() == axes["loss text_lora"].get_xlim()
    png = curves.plot_runs(runs, tmp_path / "out" / "runs.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    from PIL import Image
    width, height = Image.open(png).size
    assert width > height > 600  # two rows of panels and the bars, at 120 dpi


def _colours(ax) -> dict[str, set]:
    """{run: the colours its artists have in ax} (lines, their markers, bars)."""
    from matplotlib.colors import to_hex
    seen: dict[str, set] = {}
    for line in ax.lines:
        if line.get_gid():
            colour = line.get_color() if line.get_linestyle() != "None" else line.get_markerfacecolor()
            seen.setdefault(line.get_gid(), set()).add(to_hex(colour))
    for patch in ax.patches:
        if patch.get_gid():
            seen.setdefault(patch.get_gid().split("|")[0], set()).add(to_hex(patch.get_facecolor()))
    return seen


def test_one_colour_per_run_in_every_panel_and_bar(tmp_path):
    """14 runs: a run has one colour in every panel and in the bar chart, and no two runs look alike;
    two runs that logged the same phase (a reused SASRec) both mark its one curve."""
    from matplotlib.colors import to_hex
    runs = []
    for i in range(14):
        phases = {"sasrec": 300} if i % 2 else {"sasrec": 300, f"llm{i % 3}": 2000}
        runs.append(fake_run(tmp_path / f"run_{i:02d}_with_a_long_name", phases, OLD if i != 5 else None,
                             shift=0.0 if i in (0, 2) else 0.003 * i))
    names = [r.name for r in runs]
    fig = curves.draw_runs(runs)
    styles = plot_style.run_styles(names)
    assert len({(to_hex(s["color"]), s["marker"], s["linestyle"]) for s in plot_style.run_styles(
        [f"r{i}" for i in range(60)]).values()}) == 60
    assert len({to_hex(s["color"]) for s in styles.values()}) == 14
    axes = by_label(fig)
    for label, ax in axes.items():
        for run, colours in _colours(ax).items():
            assert colours == {to_hex(styles[run]["color"])}, (label, run)
    sasrec = set(_colours(axes["valid_auc sasrec"]))
    assert sasrec == set(names)  # run_00 and run_02 share one curve: both put their markers on it
    assert set(_colours(axes["loss llm0"])) == {n for i, n in enumerate(names) if i % 2 == 0 and i % 3 == 0}
    bars = _colours(axes["test_auc"])
    assert set(bars) == set(names) - {names[5]}  # run 5 has no results.json yet
    ticks = [t.get_text() for t in axes["test_auc"].get_xticklabels()]
    assert ticks == [n for n in names if n != names[5]]


def test_parts_of_the_test_rows_are_hatched(tmp_path):
    """all / warm / new user / new item when the runs record them, cold too where an older run lacks them;
    each part its own hatch, the same in every run, and n/a for a part a run did not record."""
    assert curves.shown_parts([OLD, OLD]) == ["all", "warm", "cold"]
    assert curves.shown_parts([NEW, NEW]) == ["all", "warm", "new_user", "new_item"]
    assert curves.shown_parts([NEW, OLD]) == ["all", "warm", "cold", "new_user", "new_item"]
    runs = [fake_run(tmp_path / "new", {"a": 100}, NEW), fake_run(tmp_path / "old", {"a": 100}, OLD)]
    ax = by_label(curves.draw_runs(runs))["test_auc"]
    hatch = {}
    for patch in ax.patches:
        if patch.get_gid():
            run, part_name = patch.get_gid().split("|")
            hatch.setdefault(part_name, set()).add(patch.get_hatch() or "")
    assert set(hatch) == {"all", "warm", "cold", "new_user", "new_item"}
    assert all(len(h) == 1 for h in hatch.values())  # one hatch per part in every run
    assert len({h.pop() for h in hatch.values()}) == 5  # and a different one for each part
    assert {t.get_gid() for t in ax.texts if t.get_text().strip() == "n/a"} == {"old|new_user", "old|new_item"}
    key = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "new user (60 rows)" in key and "cold (100 rows)" in key and "chance (0.5)" in key


def test_every_number_is_legible(tmp_path):
    """16 runs x 4 parts: every text on the chart is at least 7pt; the printed bar values do not overlap each
    other and lie inside the chart."""
    runs = [fake_run(tmp_path / f"sasrecllm_variant_{i:02d}", {"sasrec": 300, "hybrid": 2000}, NEW, shift=0.002 * i)
            for i in range(16)]
    fig = curves.draw_runs(runs)
    texts = [t for ax in fig.axes for t in ax.texts + ax.get_xticklabels() + ax.get_yticklabels()]
    texts += [t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert min(t.get_fontsize() for t in texts if t.get_text()) >= 7
    ax = by_label(fig)["test_auc"]
    values = [t for t in ax.texts if t.get_gid() == "bar value"]
    assert len(values) == 64
    boxes = [t.get_window_extent() for t in values]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    frame = ax.get_window_extent()
    assert all(frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)


def test_too_many_bars_drop_their_values(tmp_path):
    """Past what a figure can hold at 7pt, the bars carry no values (the title says so) rather than overlap."""
    tests = {f"run{i}": NEW for i in range(200)}
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    curves.draw_test_bars(ax, tests, plot_style.run_styles(list(tests)), width_in=curves.MAX_W, height_in=3)
    assert not [t for t in ax.texts if t.get_gid() == "bar value"]
    assert "too many bars" in ax.get_legend().get_title().get_text()
    plt.close(fig)


def test_warm_cold_chart_keeps_its_labels_apart_with_many_methods():
    """40 methods with long names: the overall-AUC bars' names and values do not overlap, and the legend of
    the planes lies below every panel."""
    points = [{"name": f"sasrecllm_variant_{i:02d}_with_a_long_name", "method": "sasrecllm", "all": 0.6 + 0.003 * i,
               "warm": 0.62 + 0.002 * i, "cold": 0.58 + 0.003 * i} for i in range(40)]
    fig = warm_cold.draw_warm_cold(points, reference=points[20]["name"])
    fig.canvas.draw()
    bars = fig.axes[-1]
    for texts in (bars.texts, bars.get_yticklabels()):
        boxes = [t.get_window_extent() for t in texts]
        assert len(boxes) == 40 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert min(t.get_fontsize() for t in texts) >= 7
    titles = [ax.title.get_window_extent() for ax in fig.axes]  # the reference's long name in two of them
    assert not any(a.overlaps(b) for i, a in enumerate(titles) for b in titles[i + 1:])
    assert min(t.x0 for t in titles) >= 0
    legend = fig.legends[0].get_window_extent()
    assert all(legend.y1 < ax.get_tightbbox().y0 for ax in fig.axes)  # below the tick labels and axis names too
