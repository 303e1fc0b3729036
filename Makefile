# Thin wrapper over Meson. See README.md.
BUILD   ?= build
ASAN    ?= build-asan
PREFIX  ?= /usr/local
MESON_FLAGS = --buildtype=release -Dwerror=true --prefix=$(PREFIX)

.PHONY: all deps demo check check-release check-asan install clean crash-long deb

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

# Debian packages (qimg, libqimg0, libqimg-dev, nbdkit-qimg-plugin) from
# the tracked files, into $(BUILD)/deb; lintian must find no error; then
# they are installed into a fresh Debian 12 root and used there
# (scripts/deb-test.sh). About two minutes with a nearby mirror.
deb:
	@scripts/install-deps.sh deb
	rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb/src
	git ls-files -z | xargs -0 tar -c | tar -x -C $(BUILD)/deb/src
	cd $(BUILD)/deb/src && dpkg-buildpackage -us -uc -b >../build.log 2>&1 || \
	    { tail -30 ../build.log; exit 1; }
	lintian --fail-on error $(BUILD)/deb/qimg_*.changes
	scripts/deb-test.sh $(BUILD)/deb

crash-long: all
	CRASH_SEED=$${CRASH_SEED:-$$(date +%s)} $(BUILD)/tests/crash/crash_sim states 20

clean:
	rm -rf $(BUILD) $(ASAN)
