# Thin wrapper over Meson. See README.md.
BUILD   ?= build
ASAN    ?= build-asan
PREFIX  ?= /usr/local
MESON_FLAGS = --buildtype=release -Dwerror=true --prefix=$(PREFIX)

.PHONY: all deps demo check check-release check-asan install clean crash-long

all: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

deps:
	@scripts/install-deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) $(MESON_FLAGS)

$(ASAN)/build.ninja:
	meson setup $(ASAN) --buildtype=debug -Dwerror=true \
	    -Db_sanitize=address,undefined -Db_lundef=false \
	    -Dc_args=-fno-sanitize-recover=all

demo: all
	scripts/demo.sh $(BUILD)/qimg

check: all $(ASAN)/build.ninja
	ninja -C $(ASAN)
	meson test -C $(BUILD) --print-errorlogs --num-processes 2
	meson test -C $(ASAN) --print-errorlogs --num-processes 2

install: all
	meson install -C $(BUILD)

crash-long: all
	CRASH_SEED=$${CRASH_SEED:-$$(date +%s)} $(BUILD)/tests/crash/crash_sim states 20

clean:
	rm -rf $(BUILD) $(ASAN)
