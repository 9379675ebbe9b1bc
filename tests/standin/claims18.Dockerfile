# A stand-in for an Odoo 18.0 image, for the major-upgrade tests: there is no Odoo 18 here, so this is the real
# Odoo 17 image with its release number changed to 18.0 (what `odoo-bin --version`, the server's version_info and
# the module versions it records then say) and, with PORTED=1, the custom module's manifest at 18.0.1.0.0 — what
# a real 18.0 image with the ported module reports. It is only ever asked what it holds and started: the tests
# never rely on it migrating data, which only a real upgrade (OpenUpgrade, Odoo's upgrade service) does.
ARG BASE
FROM ${BASE}
ARG PORTED=""
USER root
RUN sed -i 's/^version_info = (17, 0,/version_info = (18, 0,/' /opt/odoo/odoo/release.py \
 && grep -q '^version_info = (18, 0,' /opt/odoo/odoo/release.py \
 && if [ -n "$PORTED" ]; then sed -i "s/'17\.0\.1\.0\.0'/'18.0.1.0.0'/" /mnt/extra-addons/acme_custom/__manifest__.py; fi
USER odoo
