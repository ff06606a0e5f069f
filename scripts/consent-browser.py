#!/usr/bin/env python3
"""Plays the person in front of Gatehouse's sign-in and consent pages.

Usage: consent-browser.py AUTHORIZE_URL API_KEY

Opens the URL with a cookie jar, submits the sign-in form with the API key (keeping
every hidden field the page carries, CSRF included), submits the consent form with
"Allow", and follows the final redirect to the client's callback. Standard library
only, so it runs wherever python3 does.
"""
import http.cookiejar
import sys
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser


class FormReader(HTMLParser):
    """Collects the first form's action and its named input values."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.fields = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def main():
    url, api_key = sys.argv[1], sys.argv[2]
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)

    def fetch(target, data=None):
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with opener.open(urllib.request.Request(target, data=body), timeout=10) as res:
                return res.status, res.headers, res.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode(errors="replace")

    def submit(page_url, html, extra):
        form = FormReader()
        form.feed(html)
        if form.action is None:
            sys.exit(f"no form on {page_url}:\n{html[:2000]}")
        return fetch(urllib.parse.urljoin(page_url, form.action), {**form.fields, **extra})

    origin = urllib.parse.urlsplit(url)[:2]

    def follow(page_url, status, headers, html):
        """Follows redirects within Gatehouse; stops at a page or at a redirect away."""
        for _ in range(5):
            location = headers.get("Location")
            if status not in (302, 303) or not location:
                return page_url, status, headers, html
            target = urllib.parse.urljoin(page_url, location)
            if urllib.parse.urlsplit(target)[:2] != origin:
                return target, status, headers, html
            page_url = target
            status, headers, html = fetch(target)
        sys.exit("too many redirects")

    page, status, headers, html = follow(url, *fetch(url))
    if status != 200:
        sys.exit(f"authorize page: HTTP {status}\n{html[:2000]}")
    page, status, headers, html = follow(page, *submit(page, html, {"api_key": api_key}))
    if status == 200:  # the consent page (a remembered consent would redirect at once)
        page, status, headers, html = follow(page, *submit(page, html, {"decision": "approve"}))
    if status not in (302, 303):
        sys.exit(f"expected a redirect to the callback, got HTTP {status}\n{html[:2000]}")
    status, _, body = fetch(page)
    print(f"consent-browser: callback answered HTTP {status}: {body.strip()[:80]}")


if __name__ == "__main__":
    main()
