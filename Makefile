# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-output

.PHONY: install system-deps demo test lint clean

install: $(STAMP)

$(STAMP): requirements.lock setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# ffmpeg decodes M4A/AAC (soundfile cannot); installed with apt when we are root.
system-deps:
	@command -v ffmpeg >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	  else echo "please install ffmpeg (e.g. sudo apt-get install ffmpeg)"; exit 1; fi; }

demo: install system-deps
	rm -rf $(DEMO)
	$(BIN)/specbert example $(DEMO)
	$(BIN)/specbert ingest $(DEMO)/library --out $(DEMO)/shards --config tiny --workers 2 --no-progress \
	  --set ingest.split_by=album --set ingest.val_fraction=0.2
	$(BIN)/specbert inspect $(DEMO)/shards/manifest.jsonl --png $(DEMO)/sample.png
	$(BIN)/specbert pretrain --config tiny --manifest $(DEMO)/shards/manifest.jsonl --run-dir $(DEMO)/pretrain --steps 60
	$(BIN)/specbert ingest-stems $(DEMO)/stems --out $(DEMO)/stem-shards --config tiny --no-progress
	@echo "demo outputs are under $(DEMO)/: library/ and stems/ (example audio), shards/ (manifest.jsonl,"
	@echo "tar shards), sample.png (an ingested spectrogram), pretrain/ (checkpoints, TensorBoard logs,"
	@echo "preview PNGs), stem-shards/ (complex STFT stems for fine-tuning)"

test: install system-deps lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
