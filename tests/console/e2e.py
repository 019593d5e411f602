#!/usr/bin/env python3
"""End-to-end test of the patgate web console in headless Chromium (Selenium).

Run by tests/console.rs against a real gateway (redis store). Environment:
  PATGATE_ADMIN_URL, PATGATE_DATA_URL, PATGATE_ADMIN_KEY  the gateway under test
  PATGATE_SCREENSHOTS   directory for the page screenshots
  PATGATE_SECRETS_OUT   file to write the token secrets seen (one per line), so the
                        Rust side can check that the gateway never logged them
Never prints a secret. Exits non-zero on the first failed check.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

ADMIN = os.environ["PATGATE_ADMIN_URL"]
DATA = os.environ["PATGATE_DATA_URL"]
ADMIN_KEY = os.environ["PATGATE_ADMIN_KEY"]
SHOTS = os.environ["PATGATE_SCREENSHOTS"]
SECRETS_OUT = os.environ["PATGATE_SECRETS_OUT"]

secrets = []


def step(msg):
    print("console e2e:", msg, flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def remember(secret):
    secrets.append(secret)
    with open(SECRETS_OUT, "w") as f:
        f.write("\n".join(secrets) + "\n")


def data_plane_status(token, path="/x", forwarded_for=None):
    headers = {"Authorization": "Bearer " + token}
    if forwarded_for:
        # The gateway trusts 127.0.0.1 (client_ip.trusted_proxies): a simulated client.
        headers["X-Forwarded-For"] = forwarded_for
    req = urllib.request.Request(DATA + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def make_driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


d = make_driver()
wait = WebDriverWait(d, 10)


def js(script, *args):
    return d.execute_script(script, *args)


VIEW = {"width": 1280, "height": 900}


def viewport(width, height):
    """Emulates a viewport exactly (a headless window can't be narrower than ~500 px)."""
    js("window.scrollTo(0, 0)")
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    time.sleep(0.3)


def shot(name):
    """A full-page screenshot: the viewport grows to the page's height, then back."""
    path = os.path.join(SHOTS, name + ".png")
    full = js("return document.documentElement.scrollHeight")
    viewport(VIEW["width"], max(VIEW["height"], full))
    d.save_screenshot(path)
    viewport(VIEW["width"], VIEW["height"])
    step("screenshot " + path)


def visible(css):
    return wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))


def gone(css):
    wait.until(EC.invisibility_of_element_located((By.CSS_SELECTOR, css)))


def dialog_open(id_):
    return js("return document.getElementById(arguments[0]).open", id_)


def set_width(w):
    VIEW["width"] = w
    viewport(w, VIEW["height"])
    try:
        WebDriverWait(d, 5).until(lambda _: js("return window.innerWidth") == w)
    except TimeoutException:
        check(False, f"viewport is {w} px wide, not {js('return window.innerWidth')}")


def no_horizontal_overflow(where):
    fits = "return document.documentElement.scrollWidth <= window.innerWidth"
    try:
        # Layout settles after a viewport change; give it a moment before judging.
        WebDriverWait(d, 3).until(lambda _: js(fits))
    except TimeoutException:
        pass
    sw, iw = js("return [document.documentElement.scrollWidth, window.innerWidth]")
    check(sw <= iw, f"{where}: horizontal overflow, scrollWidth {sw} > innerWidth {iw}")


def fill(css, text):
    e = d.find_element(By.CSS_SELECTOR, css)
    e.clear()
    e.send_keys(text)
    return e


def secret_nowhere(secret, where):
    html = js("return document.documentElement.outerHTML")
    check(secret not in html, f"{where}: the secret is still in the DOM")
    values = js("return Array.from(document.querySelectorAll('input,textarea')).map(e => e.value).join('\\n')")
    holders = js("return Array.from(document.querySelectorAll('input,textarea')).filter(e => e.value.includes(arguments[0])).map(e => e.id)", secret)
    check(secret not in values, f"{where}: the secret is still in an input's value: {holders}")
    stores = js("""
        const all = [];
        for (const s of [sessionStorage, localStorage])
          for (let i = 0; i < s.length; i++) all.push(s.key(i) + '=' + s.getItem(s.key(i)));
        return all.join('\\n');""")
    check(secret not in stores, f"{where}: the secret is in web storage")
    check(js("return document.cookie") == "", f"{where}: the console set a cookie")


def click_link(text):
    """Clicks a link by its text, again if a list re-render replaced it meanwhile."""
    def attempt(_):
        try:
            d.find_element(By.LINK_TEXT, text).click()
            return True
        except StaleElementReferenceException:
            return False
    wait.until(attempt)


def rows():
    return js("return Array.from(document.querySelectorAll('#token-table tbody tr')).map(r => r.innerText)")


try:
    viewport(1280, 900)
    # --- served page, sign-in -------------------------------------------------
    d.get(ADMIN + "/ui")
    check(d.current_url.endswith("/ui/") or "/ui/#" in d.current_url, "/ui redirects to /ui/: " + d.current_url)
    visible("#signin-cred")
    unlabeled = js("""return Array.from(document.querySelectorAll('input,select,textarea'))
        .filter(e => !e.labels || e.labels.length === 0).map(e => e.id || e.name)""")
    check(unlabeled == [], f"inputs without a label: {unlabeled}")
    shot("01-signin")

    fill("#signin-cred", "pgadm_wrong-key")
    d.find_element(By.CSS_SELECTOR, "#signin-form button[type=submit]").click()
    wait.until(lambda _: "Invalid admin credentials" in d.find_element(By.ID, "signin-error").text)
    check(js("return sessionStorage.length") == 0, "a refused credential is not kept")

    fill("#signin-cred", ADMIN_KEY + Keys.ENTER)  # the form submits with Enter
    visible("#view-tokens")
    check("Admin key" in d.find_element(By.ID, "who-label").text, "signed in as the admin key")
    check(d.find_element(By.CSS_SELECTOR, "[data-nav=audit]").is_displayed(), "admin key sees Audit")
    check(js("return sessionStorage.getItem('patgate.credential')") == ADMIN_KEY, "credential in sessionStorage")
    check(js("return localStorage.length") == 0 and js("return document.cookie") == "", "nothing else stored")

    # --- create: inline validation, then the one-time secret ------------------
    d.find_element(By.ID, "new-token").click()
    wait.until(lambda _: dialog_open("dlg-create"))
    check(js("return document.activeElement.id") == "c-name", "focus starts on the first field")
    d.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    err = d.find_element(By.CSS_SELECTOR, '#create-form .field-error[data-for="name"]').text
    check("1-100" in err, "empty name is refused inline: " + err)
    check(js("return document.activeElement.id") == "c-name", "focus moves to the invalid field")
    # Escape closes a dialog.
    d.find_element(By.ID, "c-name").send_keys(Keys.ESCAPE)
    wait.until(lambda _: not dialog_open("dlg-create"))

    d.find_element(By.ID, "new-token").click()
    wait.until(lambda _: dialog_open("dlg-create"))
    fill("#c-name", "console e2e token")
    fill("#c-description", "made by the browser test")
    fill("#c-owner", "alice")
    fill("#c-org", "acme")
    fill("#c-scopes", "documents, reports")
    fill("#c-permissions", "read, write")
    fill("#c-ips", "not-an-ip")
    d.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    err = d.find_element(By.CSS_SELECTOR, '#create-form .field-error[data-for="ipAllowlist"]').text
    check("not a CIDR" in err, "bad CIDR refused inline: " + err)
    fill("#c-ips", "")
    fill("#c-meta", "no-equals-sign")
    d.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    err = d.find_element(By.CSS_SELECTOR, '#create-form .field-error[data-for="metadata"]').text
    check("key=value" in err, "bad metadata refused inline: " + err)
    fill("#c-meta", "team=docs, env=test")
    fill("#c-rate", "50/1/80")
    Select(d.find_element(By.ID, "c-expiry")).select_by_value("days")
    fill("#c-days", "3")
    shot("02-create-dialog")
    d.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    wait.until(lambda _: dialog_open("dlg-secret"))
    secret = d.find_element(By.ID, "secret-value").get_attribute("value")
    check(secret.startswith("pat_") and len(secret) == 47, "a pat_ secret is shown")
    remember(secret)
    check("will not be shown again" in d.find_element(By.ID, "dlg-secret").text, "the one-time warning is shown")
    check(js("return sessionStorage.length") == 1, "only the credential is in sessionStorage")
    check(secret not in js("return sessionStorage.getItem('patgate.credential')"), "secret not stored")
    d.find_element(By.ID, "secret-copy").click()
    shot("03-secret-once")
    d.find_element(By.ID, "secret-value").send_keys(Keys.ESCAPE)
    wait.until(lambda _: not dialog_open("dlg-secret"))
    secret_nowhere(secret, "after closing the secret dialog")

    # --- list shows it; filters; expiring badge; paging controls --------------
    wait.until(lambda _: any("console e2e token" in r for r in rows()))
    row = [r for r in rows() if "console e2e token" in r][0]
    check("expires in 3 days" in row, "expiring-within-7-days badge: " + row)
    check(secret[:12] in row and secret[12:] not in row, "list shows the display prefix only: " + row + " / " + secret[:12])
    # Every SPEC §2 field the form offers reached the API (burst and metadata too).
    q = urllib.parse.quote("console e2e token")
    req = urllib.request.Request(ADMIN + "/v1/tokens?q=" + q,
                                 headers={"Authorization": "Bearer " + ADMIN_KEY})
    with urllib.request.urlopen(req) as r:
        created = [t for t in json.loads(r.read())["items"] if t["name"] == "console e2e token"][0]
    check(created["rateLimit"] == {"requests": 50, "perSeconds": 1, "burst": 80}, "rate limit with burst: " + json.dumps(created["rateLimit"]))
    check(created["metadata"] == {"team": "docs", "env": "test"}, "metadata: " + json.dumps(created["metadata"]))
    check(created["orgId"] == "acme" and created["scopes"] == ["documents", "reports"], "org and scopes")
    # A second token for another owner, through the API, to filter it out.
    req = urllib.request.Request(ADMIN + "/v1/tokens", method="POST",
                                 data=json.dumps({"name": "bob's token", "ownerId": "bob"}).encode(),
                                 headers={"Authorization": "Bearer " + ADMIN_KEY, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        remember(json.loads(r.read())["token"])
    # Bob's token is used from four more networks: the key-sharing warning shows later.
    for client in ("198.51.100.7", "203.0.113.9", "192.0.2.44", "2001:db8:5::1"):
        status, _ = data_plane_status(secrets[1], forwarded_for=client)
        check(status == 200, f"bob's token from {client}: {status}")
    d.find_element(By.ID, "f-reset").click()
    wait.until(lambda _: len(rows()) == 2)
    fill("#f-owner", "alice" + Keys.ENTER)
    wait.until(lambda _: len(rows()) == 1 and "console e2e token" in rows()[0])
    fill("#f-owner", "")
    fill("#f-q", "bob" + Keys.ENTER)
    wait.until(lambda _: len(rows()) == 1 and "bob's token" in rows()[0])
    d.find_element(By.ID, "f-reset").click()
    wait.until(lambda _: len(rows()) == 2)

    # Traffic for the chart and the usage count.
    for _ in range(7):
        status, _ = data_plane_status(secret)
        check(status == 200, f"the new token works on the data plane ({status})")
    time.sleep(1.5)  # the usage flusher writes every second
    d.refresh()
    visible("#token-table tbody tr")
    Select(d.find_element(By.ID, "f-sort")).select_by_value("lastUsed")
    check("console e2e token" in rows()[0], "sorted by last use, the used token comes first")
    shot("04-token-list")
    set_width(390)
    no_horizontal_overflow("token list at 390 px")
    shot("04-token-list-390")
    set_width(1280)
    no_horizontal_overflow("token list at 1280 px")

    # --- token page: chart, edit, audit ----------------------------------------
    d.find_element(By.LINK_TEXT, "console e2e token").click()
    visible("#view-token")
    wait.until(lambda _: js("return document.querySelectorAll('#t-chart svg rect.bar').length") >= 1)
    check("7 requests" in d.find_element(By.ID, "t-chart-total").text,
          "chart total: " + d.find_element(By.ID, "t-chart-total").text)
    # Client IPs: the 7 requests came from 127.0.0.1, one /24, so no warning.
    ip_rows = "return Array.from(document.querySelectorAll('#t-ips tr')).map(r => Array.from(r.cells).map(c => c.textContent))"
    wait.until(lambda _: len(js(ip_rows)) == 1 and js(ip_rows)[0][0] == "127.0.0.0/24")
    check(js(ip_rows)[0][1] == "7", f"7 requests from 127.0.0.0/24: {js(ip_rows)}")
    check(d.find_element(By.ID, "ips-h").text == "Client IPs (7 days)", "the IP table's heading")
    check(not d.find_elements(By.ID, "t-ips-warning"), "one network: no key-sharing warning")
    # Quota (rate_limit.quota: 1000 per month and token): the 7 requests are charged.
    visible("#t-quota-card")
    check(d.find_element(By.ID, "t-quota-used").text == "7 / 1000",
          "quota used: " + d.find_element(By.ID, "t-quota-used").text)
    check(js("return document.getElementById('t-quota-meter').value") == 7, "the quota bar shows 7")
    quota_text = d.find_element(By.ID, "t-quota").text
    check("993 remaining" in quota_text and "this month" in quota_text and "Resets" in quota_text,
          "quota text: " + quota_text)
    fill("#e-name", "console e2e renamed")
    d.find_element(By.CSS_SELECTOR, "#edit-form button[type=submit]").click()
    wait.until(lambda _: d.find_element(By.ID, "token-h").text == "console e2e renamed")
    wait.until(lambda _: "token.update" in d.find_element(By.ID, "t-audit").text)
    shot("05-token-page")
    set_width(390)
    no_horizontal_overflow("token page at 390 px")
    shot("05-token-page-390")
    set_width(1280)
    no_horizontal_overflow("token page at 1280 px")

    # --- regenerate with grace: a new secret, shown the same way ---------------
    d.find_element(By.ID, "t-regen").click()
    wait.until(lambda _: dialog_open("dlg-regen"))
    Select(d.find_element(By.ID, "r-grace")).select_by_value("300")
    d.find_element(By.CSS_SELECTOR, "#regen-form button[type=submit]").click()
    wait.until(lambda _: dialog_open("dlg-secret"))
    new_secret = d.find_element(By.ID, "secret-value").get_attribute("value")
    remember(new_secret)
    check(new_secret.startswith("pat_") and new_secret != secret, "regenerate shows a new secret")
    d.find_element(By.CSS_SELECTOR, "#dlg-secret [data-close]").click()
    wait.until(lambda _: not dialog_open("dlg-secret"))
    secret_nowhere(new_secret, "after closing the regenerated secret")
    check(data_plane_status(new_secret)[0] == 200, "the new secret works")
    check(data_plane_status(secret)[0] == 200, "the old secret works during the grace period")

    # --- deactivate / activate, then revoke (confirm) → 401 on the data plane ---
    d.find_element(By.ID, "t-toggle").click()
    wait.until(lambda _: "inactive" in d.find_element(By.ID, "token-status").text)
    check(data_plane_status(new_secret)[0] == 401, "deactivated token is refused")
    d.find_element(By.ID, "t-toggle").click()
    wait.until(lambda _: "expires in" in d.find_element(By.ID, "token-status").text)
    d.find_element(By.ID, "t-revoke").click()
    wait.until(lambda _: dialog_open("dlg-confirm"))
    check(js("return document.activeElement.textContent") == "Cancel", "Cancel is focused first")
    d.find_element(By.ID, "confirm-ok").click()
    wait.until(lambda _: "revoked" in d.find_element(By.ID, "token-status").text)
    status, body = data_plane_status(new_secret)
    check(status == 401 and "PAT has been revoked" in body, f"revoked token: {status} {body}")

    # --- owners (admin key): disable → tokens fail, enable → they work --------
    bob = secrets[1]
    d.find_element(By.CSS_SELECTOR, "[data-nav=owners]").click()
    visible("#view-owners")
    fill("#o-id", "bob")
    d.find_element(By.ID, "o-disable").click()
    wait.until(lambda _: dialog_open("dlg-confirm"))
    d.find_element(By.ID, "confirm-ok").click()
    wait.until(lambda _: "disabled" in d.find_element(By.ID, "notice").text)
    time.sleep(0.3)
    status, body = data_plane_status(bob)
    check(status == 401 and "PAT is inactive" in body, f"disabled owner's token: {status} {body}")
    shot("06-owners")
    d.find_element(By.ID, "o-enable").click()
    wait.until(lambda _: "enabled" in d.find_element(By.ID, "notice").text)
    time.sleep(0.3)
    check(data_plane_status(bob)[0] == 200, "enabled owner's token works again")
    d.find_element(By.CSS_SELECTOR, "#owner-form button[type=submit]").click()
    visible("#view-tokens")
    wait.until(lambda _: len(rows()) == 1 and "bob's token" in rows()[0])

    # --- audit trail -----------------------------------------------------------
    d.find_element(By.CSS_SELECTOR, "[data-nav=audit]").click()
    wait.until(lambda _: "token.revoke" in d.find_element(By.ID, "audit-rows").text)
    shot("07-audit")

    # --- delete (confirm) ------------------------------------------------------
    d.find_element(By.CSS_SELECTOR, "[data-nav=tokens]").click()
    d.find_element(By.ID, "f-reset").click()
    wait.until(lambda _: any("bob's token" in r for r in rows()))
    # Two list loads race here (the nav click and the reset): the link may be redrawn.
    click_link("bob's token")
    visible("#view-token")
    # Used from 127.0.0.1 and four other networks: more than warn_above (3).
    warning = visible("#t-ips-warning")
    check("5 networks" in warning.text, "key-sharing warning: " + warning.text)
    prefixes = [r[0] for r in js(ip_rows)]
    check(sorted(prefixes) == sorted(["127.0.0.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                      "192.0.2.0/24", "2001:db8:5::/64"]), f"bob's prefixes: {prefixes}")
    shot("09-key-sharing")
    set_width(390)
    no_horizontal_overflow("token page with client IPs at 390 px")
    set_width(1280)
    d.find_element(By.ID, "t-delete").click()
    wait.until(lambda _: dialog_open("dlg-confirm"))
    d.find_element(By.ID, "confirm-ok").click()
    visible("#view-tokens")
    wait.until(lambda _: not any("bob's token" in r for r in rows()))
    check(data_plane_status(bob)[0] == 401, "deleted token is refused")

    # --- a tokens:self PAT: no owners, no audit --------------------------------
    req = urllib.request.Request(ADMIN + "/v1/tokens", method="POST",
                                 data=json.dumps({"name": "self service", "ownerId": "carol",
                                                  "permissions": ["tokens:self"]}).encode(),
                                 headers={"Authorization": "Bearer " + ADMIN_KEY, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        carol = json.loads(r.read())["token"]
    remember(carol)
    d.find_element(By.ID, "signout").click()
    visible("#signin-cred")
    check(js("return sessionStorage.length") == 0, "sign-out clears the credential")
    fill("#signin-cred", carol + Keys.ENTER)
    visible("#view-tokens")
    check(not d.find_element(By.CSS_SELECTOR, "[data-nav=audit]").is_displayed(), "PAT: no Audit")
    check(not d.find_element(By.CSS_SELECTOR, "[data-nav=owners]").is_displayed(), "PAT: no Owners")
    wait.until(lambda _: len(rows()) == 1 and "self service" in rows()[0])
    d.find_element(By.LINK_TEXT, "self service").click()
    visible("#view-token")
    check(not d.find_element(By.ID, "t-audit-card").is_displayed(), "PAT: no audit card")
    shot("08-pat-token-page")

    # --- nothing the CSP blocked, no script errors ------------------------------
    problems = [e["message"] for e in d.get_log("browser")
                if "Content Security Policy" in e["message"] or "Uncaught" in e["message"]]
    check(problems == [], f"browser console: {problems}")
    step("all checks passed")
finally:
    d.quit()
