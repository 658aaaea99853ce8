# Build and install hast: `make`, then `make install` (as root).
#
#   make                        cargo build --release --locked of the binaries
#   make install                copy everything under $(DESTDIR)$(PREFIX)
#   make uninstall              remove what `make install` put there
#   make deb                    the Debian package (cargo-deb), target/debian/*.deb
#
# `make install` does not build (so that `sudo make install` writes nothing
# root-owned into target/): it installs the binaries found in $(BINDIR_BUILD).
# It never writes to /etc: the example configurations go to
# $(DOCDIR)/examples. The systemd units are installed, not enabled.

PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR ?= $(PREFIX)/sbin
LIBEXECDIR ?= $(PREFIX)/libexec/hast
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/hast
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
DBUSPOLICYDIR ?= $(PREFIX)/share/dbus-1/system.d
# systemd reads units from /usr/local/lib/systemd/system too.
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system

CARGO ?= cargo
CARGO_TARGET_DIR ?= target
BINDIR_BUILD ?= $(CARGO_TARGET_DIR)/release

BINS = hastd hastctl hastmon hastmonctl hastcd hastcctl
MAN5 = hast.conf.5 hastmon.conf.5
MAN8 = hastd.8 hastctl.8 hastmon.8 hastmonctl.8
UNITS = hastd.service hastmon.service hastcd.service
EXAMPLES = contrib/hastmon/hastmon.conf.example contrib/hastcd/hastcd.conf
# Generated files of the Debian package (completions, units, gzipped pages).
DEB_ASSETS = $(CARGO_TARGET_DIR)/deb-assets

INSTALL ?= install

.PHONY: all build install uninstall deb deb-assets clean-deb-assets

all: build

build:
	$(CARGO) build --release --locked --bins

install:
	@for b in $(BINS); do \
		[ -x "$(BINDIR_BUILD)/$$b" ] || { echo "$(BINDIR_BUILD)/$$b missing: run make first" >&2; exit 1; }; \
	done
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(LIBEXECDIR) \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(BASHCOMPDIR) \
		$(DESTDIR)$(DBUSPOLICYDIR) $(DESTDIR)$(SYSTEMDUNITDIR)
	for b in $(BINS); do $(INSTALL) -m 0755 $(BINDIR_BUILD)/$$b $(DESTDIR)$(SBINDIR)/$$b; done
	$(INSTALL) -m 0755 contrib/hastmon/hastmon-hastd $(DESTDIR)$(LIBEXECDIR)/hastmon-hastd
	for m in $(MAN5); do $(INSTALL) -m 0644 man/$$m $(DESTDIR)$(MANDIR)/man5/$$m; done
	for m in $(MAN8); do $(INSTALL) -m 0644 man/$$m $(DESTDIR)$(MANDIR)/man8/$$m; done
	for b in $(BINS); do \
		$(BINDIR_BUILD)/$$b --completions bash > $(DESTDIR)$(BASHCOMPDIR)/$$b || exit 1; \
	done
	# The units and the example hastmon.conf name the package's paths; rewrite them for this PREFIX.
	for u in $(UNITS); do \
		sed 's#/usr/sbin/#$(SBINDIR)/#g' contrib/systemd/$$u > $(DESTDIR)$(SYSTEMDUNITDIR)/$$u || exit 1; \
		chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/$$u; \
	done
	sed 's#/usr/libexec/hast/#$(LIBEXECDIR)/#g' contrib/hastmon/hastmon.conf.example \
		> $(DESTDIR)$(DOCDIR)/examples/hastmon.conf.example
	$(INSTALL) -m 0644 contrib/hastcd/hastcd.conf $(DESTDIR)$(DOCDIR)/examples/hastcd.conf
	$(INSTALL) -m 0644 contrib/dbus/org.hast.connector.conf $(DESTDIR)$(DBUSPOLICYDIR)/org.hast.connector.conf

uninstall:
	for b in $(BINS); do rm -f $(DESTDIR)$(SBINDIR)/$$b $(DESTDIR)$(BASHCOMPDIR)/$$b; done
	rm -f $(DESTDIR)$(LIBEXECDIR)/hastmon-hastd
	-rmdir $(DESTDIR)$(LIBEXECDIR)
	for m in $(MAN5); do rm -f $(DESTDIR)$(MANDIR)/man5/$$m; done
	for m in $(MAN8); do rm -f $(DESTDIR)$(MANDIR)/man8/$$m; done
	for u in $(UNITS); do rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/$$u; done
	rm -f $(DESTDIR)$(DOCDIR)/examples/hastmon.conf.example $(DESTDIR)$(DOCDIR)/examples/hastcd.conf
	-rmdir $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(DBUSPOLICYDIR)/org.hast.connector.conf

# The package's generated assets ([package.metadata.deb] in Cargo.toml):
# bash completions from the release binaries, gzipped manual pages.
deb-assets: build
	rm -rf $(DEB_ASSETS)
	mkdir -p $(DEB_ASSETS)/completions $(DEB_ASSETS)/man
	for b in $(BINS); do \
		$(BINDIR_BUILD)/$$b --completions bash > $(DEB_ASSETS)/completions/$$b || exit 1; \
	done
	for m in $(MAN5) $(MAN8); do gzip -9n < man/$$m > $(DEB_ASSETS)/man/$$m.gz || exit 1; done

deb: deb-assets
	$(CARGO) deb --no-build --locked --strip
