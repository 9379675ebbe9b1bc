# A stand-in for a release whose Odoo never serves: the server process dies at start (a crash loop under a
# restart policy), so /web/health never answers and a deploy of it must be rolled back at the health time
# limit. Real Odoo cannot be made to do this on demand without a broken build; this image is the Odoo image
# with an entrypoint that exits at once, as a release whose server crashes on start does.
ARG ODOO_IMAGE
FROM ${ODOO_IMAGE}
ENTRYPOINT ["sh", "-c", "echo 'odoo-bin: stand-in release crashing at start' >&2; exit 1"]
