"""The REST API: one router per resource (``routes/``), its typed dependencies (``deps``), the
authentication (``auth``) and the request guards. :func:`service.app.create_app` puts them together
with the dashboard."""
