"""The ``e2v app`` page (gradio Blocks): Generate (reference slots, prompt, sampling and speed options, progress,
queue, result, gallery), Evaluate (``e2v bench`` scorers beside the A2-Bench anchors) and Compare (``e2v bench
compare`` of report folders). Handlers turn every bad input into a message in the page (``gr.Error``); the work is
done by :mod:`e2v.app.jobs` and :mod:`e2v.app.evaluate`.
"""

import functools
import random
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from e2v import registry
from e2v.app.evaluate import METRIC_COLUMNS, compare_reports, evaluate, report_folders
from e2v.app.jobs import KINDS, Cancelled, Form, JobRunner, form_defaults
from e2v.argtypes import BadInput
from e2v.bench.anchors import ANCHOR_SOURCE
from e2v.bench.compare import CompareError
from e2v.bench.scorers import DEFAULT_SCORERS, load_scorers
from e2v.datamodules.video_io import _to_uint8_frames
from e2v.pipeline.batch import MAX_REFERENCES
from e2v.pipeline.step_cache import TEACACHE_WAN

SEED_LIMIT = 2**31 - 1  # what the randomise button draws below
# the Form fields in the order of the page's form inputs
FIELDS = ("prompt", "negative_prompt", "seed", "height", "width", "frames", "fps", "steps", "guidance", "image_guidance",
          "solver", "shift", "step_cache", "teacache")


def prepared_preview(pipe: Any, upload: str | None, kind: str, height: Any, width: Any):
    """What the model sees of one upload: the preset's padding/cropping at the form's frame size (uint8
    ``[H, W, 3]``), or None for an empty slot; gr.Error naming the file when it is not a usable image."""
    if not upload:
        return None
    try:
        size = (int(height), int(width))
        if min(size) <= 0:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        size = (480, 832)  # the frame size is checked at Generate; the preview still shows the padding
    try:
        prepared, _ = pipe.prepare_references([upload], [kind], *size)
    except (OSError, ValueError) as err:
        raise gr.Error(f"{Path(upload).name}: {str(err).replace(str(upload), 'this upload')}") from None
    return _to_uint8_frames(prepared[0].transpose(0, 1))[0]


def build_ui(runner: JobRunner, report_roots: Sequence[Path] = ()) -> gr.Blocks:
    """The page over ``runner`` (its pipeline loaded once); ``report_roots``: folders the Compare tab searches for
    bench reports (besides the app's own evaluations)."""
    pipe, args = runner.pipe, runner.args
    defaults = form_defaults(args, pipe)
    slot_kinds = pipe.preset.default_kinds(MAX_REFERENCES)
    load_scorers()
    scorer_names = [entry.name for entry in registry.entries("scorer")]
    source = args.checkpoint or args.weights
    with gr.Blocks(title="e2v app") as page:
        gr.Markdown(f"## e2v: elements to video\nModel `{source}` · preset **{pipe.preset.name}** · device "
                    f"`{pipe.device}` · outputs in `{runner.out}`")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=3):
                    count = gr.State(1)
                    files, kinds, previews, groups = [], [], [], []
                    for i in range(MAX_REFERENCES):
                        with gr.Group(visible=i == 0) as group:
                            with gr.Row():
                                files.append(gr.File(label=f"reference {i + 1}", file_types=["image"],
                                                     type="filepath", elem_id=f"ref{i}-file", height=120))
                                kinds.append(gr.Dropdown(list(KINDS), value=slot_kinds[i], label="kind",
                                                         elem_id=f"ref{i}-kind", min_width=120))
                                previews.append(gr.Image(label="what the model sees", interactive=False,
                                                         height=120, elem_id=f"ref{i}-prepared"))
                        groups.append(group)
                    with gr.Row():
                        add = gr.Button("+ reference", elem_id="add-ref", size="sm")
                        remove = gr.Button("- reference", elem_id="remove-ref", size="sm")
                    prompt = gr.Textbox(label="prompt", lines=2, elem_id="prompt")
                    negative = gr.Textbox(label="negative prompt", value=defaults["negative_prompt"], lines=1,
                                          elem_id="negative-prompt")
                    with gr.Row():
                        seed = gr.Number(label="seed", value=defaults["seed"], precision=0, elem_id="seed")
                        dice = gr.Button("randomise", elem_id="randomise", size="sm")
                    with gr.Row():
                        height = gr.Number(label="height", value=defaults["height"], precision=0, elem_id="height")
                        width = gr.Number(label="width", value=defaults["width"], precision=0, elem_id="width")
                        frames = gr.Number(label="frames (4k+1)", value=defaults["frames"], precision=0,
                                           elem_id="frames")
                        fps = gr.Number(label="fps", value=defaults["fps"], elem_id="fps")
                    with gr.Row():
                        steps = gr.Number(label="steps", value=defaults["steps"], precision=0, elem_id="steps")
                        guidance = gr.Number(label="text guidance", value=defaults["guidance"], elem_id="guidance")
                        image_guidance = gr.Number(label="image guidance (empty/0: off)",
                                                   value=defaults["image_guidance"], elem_id="image-guidance")
                        solver = gr.Dropdown([e.name for e in registry.entries("solver")], value=defaults["solver"],
                                             label="solver", elem_id="solver")
                        shift = gr.Number(label="shift", value=defaults["shift"], elem_id="shift")
                    with gr.Accordion("speed", open=False):
                        with gr.Row():
                            step_cache = gr.Number(label="step cache threshold (empty/0: off)",
                                                   value=defaults["step_cache"], elem_id="step-cache")
                            teacache = gr.Dropdown([None, *TEACACHE_WAN], value=defaults["teacache"],
                                                   label="TeaCache fit (with a threshold)", elem_id="teacache")
                        gr.Markdown(f"Set when the app started (restart to change): quantisation "
                                    f"`{args.quantize or 'off'}`, offload `{'on' if args.offload else 'off'}`, "
                                    f"block offload `{args.offload_blocks or 'off'}`, VAE tile `{args.tile or 'off'}`.")
                    with gr.Row():
                        run = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Cancel", elem_id="cancel")
                    status = gr.Markdown(elem_id="status")
                with gr.Column(scale=2):
                    video = gr.Video(label="result", elem_id="result-video", interactive=False)
                    strip = gr.Image(label="references | frames", interactive=False, elem_id="result-strip")
                    command = gr.Code(label="the same video with e2v generate", language="shell",
                                      elem_id="result-command")
                    settings = gr.JSON(label="settings", elem_id="result-settings")
            gallery = gr.Gallery(label="results since the app started (click one to load it into the form)",
                                 columns=4, height=200, object_fit="contain", elem_id="gallery")

        with gr.Tab("Evaluate"):
            gr.Markdown("Score a result, or an uploaded video with its references, with the `e2v bench` scorers. "
                        f"Anchors: {ANCHOR_SOURCE} (the paper's models; e2v's scorers are open stand-ins, so read "
                        "them for direction and level).")
            with gr.Row():
                pick = gr.Dropdown([], label="result", elem_id="eval-result")
                upload_video = gr.File(label="or a video", file_types=["video"], type="filepath")
                upload_refs = gr.File(label="its references", file_count="multiple", file_types=["image"],
                                      type="filepath")
            with gr.Row():
                upload_kinds = gr.Textbox(label="their kinds, comma separated (default object)")
                eval_prompt = gr.Textbox(label="prompt (uploads)")
            chosen = gr.CheckboxGroup(scorer_names, value=[n for n in DEFAULT_SCORERS if n in scorer_names],
                                      label="scorers", elem_id="eval-scorers")
            score = gr.Button("Score", variant="primary", elem_id="score")
            metrics = gr.Dataframe(headers=METRIC_COLUMNS, interactive=False, elem_id="eval-table")
            eval_note = gr.Markdown(elem_id="eval-note")

        with gr.Tab("Compare"):
            folders = gr.Dropdown(report_folders([runner.out, *report_roots]), multiselect=True,
                                  allow_custom_value=True, label="bench report folders", elem_id="compare-folders")
            with gr.Row():
                refresh = gr.Button("refresh list", size="sm")
                compare = gr.Button("Compare", variant="primary", elem_id="compare")
            compare_md = gr.Markdown(elem_id="compare-table")
            charts = gr.Gallery(label="charts", columns=2, elem_id="compare-charts")

        # ------------------------------------------------------------------------------------------- handlers
        def show_slots(n: int):
            return [gr.update(visible=i < n) for i in range(MAX_REFERENCES)]

        def add_slot(n: int):
            if n >= MAX_REFERENCES:
                raise gr.Error(f"at most {MAX_REFERENCES} references")
            return n + 1, *show_slots(n + 1)

        def remove_slot(n: int):
            if n <= 1:
                raise gr.Error("at least one reference slot stays")
            cleared = [None if i == n - 1 else gr.update() for i in range(MAX_REFERENCES)]
            return n - 1, *show_slots(n - 1), *cleared

        add.click(add_slot, count, [count, *groups])
        remove.click(remove_slot, count, [count, *groups, *files])
        for file, kind, preview in zip(files, kinds, previews):
            for event in (file.change, kind.change):
                event(functools.partial(prepared_preview, pipe), [file, kind, height, width], preview)
        dice.click(lambda: random.randint(0, SEED_LIMIT), None, seed)

        form_inputs = [prompt, negative, seed, height, width, frames, fps, steps, guidance, image_guidance, solver,
                       shift, step_cache, teacache]

        def read_form(data: dict) -> Form:
            n = data[count]
            fields = dict(zip(FIELDS, (data[c] for c in form_inputs)))
            references = [(data[f], data[k]) for f, k in zip(files[:n], kinds[:n]) if data[f]]
            return Form(references=references, **fields)

        def gallery_items():
            return [(str(r.strip), r.label) for r in reversed(runner.results)]

        def result_choices():
            return gr.update(choices=[r.label for r in reversed(runner.results)])

        def generate(data: dict, request: gr.Request, progress=gr.Progress()):
            form = read_form(data)

            def report(done: int, total: int, left: float) -> None:
                progress((done, total), desc=f"denoising step {done}/{total}, about {left:.0f} s left",
                         unit="steps")

            try:
                result = runner.run(form, request.session_hash or "", report)
            except (BadInput, Cancelled) as err:
                raise gr.Error(str(err)) from None
            except (OSError, RuntimeError, ValueError) as err:
                raise gr.Error(f"generation failed: {err}") from None
            message = f"done: job #{result.number} in `{result.folder}`"
            return (str(result.video), str(result.strip), result.settings["command"], result.settings,
                    gallery_items(), message, result_choices())

        job = run.click(generate, {count, *files, *kinds, *form_inputs},
                        [video, strip, command, settings, gallery, status, pick], concurrency_limit=1,
                        concurrency_id="device")

        def cancel(request: gr.Request):
            cancelled = runner.cancel(request.session_hash or "")
            return "cancelled the running job" if cancelled else "cancelled (the job had not started)"

        stop.click(cancel, None, status, cancels=[job], queue=False)

        def load_result(evt: gr.SelectData):
            result = list(reversed(runner.results))[evt.index]
            saved = result.settings
            n = len(saved["references"])
            uploads = [path for path, _ in saved["references"]] + [None] * (MAX_REFERENCES - n)
            ref_kinds = [kind for _, kind in saved["references"]] + slot_kinds[n:]
            fields = [saved[key] for key in FIELDS]
            return (n, *show_slots(n), *uploads, *ref_kinds, *fields, str(result.video), str(result.strip),
                    saved["command"], saved)

        gallery.select(load_result, None, [count, *groups, *files, *kinds, *form_inputs, video, strip, command,
                                           settings])

        def score_video(label, video_upload, ref_uploads, kinds_text, prompt_text, scorers):
            if not scorers:
                raise gr.Error("choose at least one scorer")
            if label:
                result = next((r for r in runner.results if r.label == label), None)
                if result is None:
                    raise gr.Error(f"no result {label!r}")
                pairs = [(Path(path), kind) for path, kind in result.settings["references"]]
                target, text = result.video, result.settings["prompt"]
            else:
                if not video_upload or not ref_uploads:
                    raise gr.Error("choose a result, or upload a video and its references")
                given = [k.strip().lower() for k in (kinds_text or "").split(",") if k.strip()]
                if len(given) > len(ref_uploads):
                    raise gr.Error(f"{len(given)} kinds for {len(ref_uploads)} references")
                pairs = list(zip(ref_uploads, given + ["object"] * (len(ref_uploads) - len(given))))
                target, text = video_upload, prompt_text or ""
            try:
                _, rows, folder = evaluate(Path(target), pairs, text, scorers, runner.out)
            except (ValueError, KeyError, TypeError, ImportError, OSError, RuntimeError) as err:
                raise gr.Error(f"scoring failed: {err}") from None
            return rows, f"report: `{folder}` (listed in the Compare tab)"

        def refresh_folders():
            return gr.update(choices=report_folders([runner.out, *report_roots]))

        score.click(score_video, [pick, upload_video, upload_refs, upload_kinds, eval_prompt, chosen],
                    [metrics, eval_note], concurrency_limit=1, concurrency_id="device").then(
            refresh_folders, None, folders)
        refresh.click(refresh_folders, None, folders)

        def run_compare(chosen_folders):
            if not chosen_folders:
                raise gr.Error("choose one or more report folders")
            try:
                text, images, _ = compare_reports(chosen_folders, runner.out)
            except CompareError as err:
                raise gr.Error(str(err)) from None
            return text, images

        compare.click(run_compare, folders, [compare_md, charts])
    return page
