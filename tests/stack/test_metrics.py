"""Prometheus metrics: served to an internal scraper (with credentials), never through Nginx."""

METRIC = "mlflow_http_request_duration_seconds"


SCRAPE = """
import base64, sys, urllib.error, urllib.request
req = urllib.request.Request("http://127.0.0.1:5000/metrics", headers={"Host": "mlflow:5000"})
if len(sys.argv) > 1:
    req.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[1].encode()).decode())
try:
    resp = urllib.request.urlopen(req, timeout=10)
    print(resp.status); print(resp.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def scrape(service_host, auth=None) -> tuple:
    """GET /metrics from inside the mlflow container (loopback there), where an internal scraper would be."""
    host = service_host("mlflow")
    cmd = host.run("python3 -c %s " + ("%s" if auth else ""), SCRAPE, *([":".join(auth)] if auth else []))
    assert cmd.rc == 0, cmd.stderr
    status, _, body = cmd.stdout.partition("\n")
    return int(status), body


def test_internal_scraper_gets_request_metrics(stack, http, admin_auth, service_host):
    http.get(f"{stack}/health", timeout=10)
    status, body = scrape(service_host, admin_auth)
    assert status == 200
    assert f"# TYPE {METRIC} histogram" in body
    assert f'{METRIC}_count{{method="GET"' in body


def test_internal_scraper_needs_credentials(stack, service_host):
    assert scrape(service_host)[0] == 401


def test_metrics_not_reachable_through_nginx(stack, http, admin_auth):
    for auth in (None, admin_auth):
        r = http.get(f"{stack}/metrics", auth=auth, timeout=10)
        assert r.status_code == 404 and METRIC not in r.text
