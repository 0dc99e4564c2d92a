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

# The whole path on the example library, tiny model, a few minutes on 2 CPU cores.
demo: install system-deps
	rm -rf $(DEMO)
	$(BIN)/specbert example $(DEMO) --stems 6
	$(BIN)/specbert ingest $(DEMO)/library --out $(DEMO)/shards --config tiny --workers 2 --no-progress \
	  --set ingest.split_by=album --set ingest.val_fraction=0.2
	$(BIN)/specbert inspect $(DEMO)/shards/manifest.jsonl --png $(DEMO)/sample.png
	$(BIN)/specbert pretrain --config tiny --manifest $(DEMO)/shards/manifest.jsonl --run-dir $(DEMO)/pretrain --steps 60
	$(BIN)/specbert ingest-stems $(DEMO)/stems --out $(DEMO)/stem-shards --config tiny --workers 2 --no-progress \
	  --set ingest.val_fraction=0.1
	$(BIN)/specbert finetune --config tiny --manifest $(DEMO)/stem-shards/manifest.jsonl --run-dir $(DEMO)/finetune \
	  --init $(DEMO)/pretrain
	$(BIN)/specbert export $(DEMO)/finetune $(DEMO)/model.safetensors
	$(BIN)/specbert separate $(DEMO)/model.safetensors "$$(find $(DEMO)/library -name '*.flac' | sort | head -n 1)" \
	  -o $(DEMO)/separated
	$(BIN)/specbert evaluate $(DEMO)/model.safetensors $(DEMO)/stems -o $(DEMO)/evaluation --png
	@echo
	@echo "demo outputs are under $(DEMO)/:"
	@echo "  library/, stems/      example audio (a music library; stems in the MUSDB18-HQ layout)"
	@echo "  shards/, sample.png   STFT shards with manifest.jsonl; one ingested spectrogram"
	@echo "  pretrain/             pretraining run: checkpoints/, tensorboard/, previews/, metrics.jsonl, meta.json"
	@echo "  stem-shards/          complex STFT stems for fine-tuning"
	@echo "  finetune/             fine-tuning run (from pretrain/): init.json, checkpoints/, previews/, metrics.jsonl"
	@echo "  model.safetensors     the exported separation model"
	@echo "  separated/            an example song split into *_instrumental.wav and *_vocals.wav"
	@echo "  evaluation/           evaluation.md, .json, .png: SDR of the model, the floor and the ceiling;"
	@echo "                        evaluation_spectrograms.png: a test track, true and separated"
	@echo "see them in TensorBoard: $(BIN)/tensorboard --logdir $(DEMO)"

test: install system-deps lint
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
