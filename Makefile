# One-command entry points. `make demo` installs and runs the main job; `make test` installs and runs the tests.
PY ?= python3
# The CPU build of torch; override for CUDA machines, e.g. `make install TORCH=torch`.
TORCH ?= torch==2.13.0
OUT ?= out
APT_PACKAGES = espeak-ng sox mosquitto mosquitto-clients openssl libsndfile1 libportaudio2 libasound2-plugins pulseaudio chromium

.PHONY: install install-system demo test test-fast bench

install-system:
	@if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null || ! command -v mosquitto >/dev/null || ! command -v mosquitto_sub >/dev/null \
	    || ! command -v openssl >/dev/null || ! ldconfig -p | grep -q libsndfile || ! ldconfig -p | grep -q libportaudio \
	    || ! command -v pulseaudio >/dev/null || ! command -v chromium >/dev/null || ! ls /usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(APT_PACKAGES) >/dev/null; \
	fi

install: install-system
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,audio,mqtt,http,vad,train]"

demo: install
	mkdir -p $(OUT)
	espeak-ng -v en-us -s 150 -w $(OUT)/question.wav "What is the capital of France?"
	omnivox chat --input $(OUT)/question.wav --output $(OUT)/answer.wav --text-out $(OUT)/answer.txt

test: install
	$(PY) -m pytest -q --durations=20

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/bench_bus.py
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_snac_streaming.py
	$(PY) benchmarks/bench_convert.py

# The shipped demo model (docs/demo_model.md), rebuilt from its recipes on CPU; resumable: a finished step is
# skipped, an interrupted training resumes from its last checkpoint (resume: auto). Work folder: runs/demo/.
# Stages 1-3 learn single spoken questions; stage 4 starts from stage 3's fp16 copy and adds conversations, context,
# actions and typed questions (training/demo_robot.py). Its fp16 copy goes to models/demo (the packaged model
# `demo`), then both held-out evaluations run on it.
DEMO_STAGES = demo_stage1_alignment:stage1 demo_stage2_adaption:stage2 demo_stage3_finetune:stage3
.PHONY: demo-model
demo-model:
	test -f runs/demo/data/demo.json || nice -n 10 $(PY) -m omnivox.training.demo_domain build runs/demo/data
	test -f runs/demo/codec/summary.json || nice -n 10 omnivox train recipes/demo_codec.yaml progress=false
	for split in train validation test; do \
	  nice -n 10 omnivox prepare recipes/demo_stage1_alignment.yaml runs/demo/data/$$split.jsonl || exit 1; done
	for stage in $(DEMO_STAGES); do \
	  test -f runs/demo/$${stage#*:}/summary.json || \
	    nice -n 10 omnivox train recipes/$${stage%:*}.yaml progress=false || exit 1; done
	test -f runs/demo/stage3/fp16/model.safetensors || \
	  $(PY) -m omnivox.training.export runs/demo/stage3/export runs/demo/stage3/fp16
	test -f runs/demo/data/robot.json || nice -n 10 $(PY) -m omnivox.training.demo_robot build runs/demo/data
	for split in robot_train robot_test; do \
	  nice -n 10 omnivox prepare recipes/demo_stage4_robot.yaml runs/demo/data/$$split.jsonl || exit 1; done
	test -f runs/demo/stage4/summary.json || nice -n 10 omnivox train recipes/demo_stage4_robot.yaml progress=false
	$(PY) -m omnivox.training.export runs/demo/stage4/export models/demo
	nice -n 10 $(PY) -m omnivox.training.demo_domain evaluate models/demo \
	  runs/demo/data/test.prepared.jsonl --json runs/demo/evaluation.json
	nice -n 10 $(PY) -m omnivox.training.demo_robot evaluate models/demo \
	  runs/demo/data/robot_test.prepared.jsonl --limit 12 --json runs/demo/robot_evaluation.json

# The end-of-turn detector (plugins/turn_end.py, docs/turn_taking.md), rebuilt from its recipe on CPU (~7 min):
# examples from the demo corpus's sentences with inner pauses, recipes/turn_end.yaml, the export copied to
# models/turn_end (packaged), then the false cut-in benchmark on the held-out recordings.
.PHONY: turn-end-model
turn-end-model:
	test -f runs/turn_end/data/summary.json || nice -n 10 $(PY) -m omnivox.training.turn_end build runs/turn_end/data
	nice -n 10 omnivox train recipes/turn_end.yaml
	mkdir -p models/turn_end && cp runs/turn_end/export/turn_end.json runs/turn_end/export/turn_end.safetensors models/turn_end/
	nice -n 10 $(PY) benchmarks/bench_turn_end.py --detector models/turn_end --json runs/turn_end/bench.json
