"""The dashboard in a real browser: headless Chromium driven by Selenium.

Run by crates/keyward/tests/it/dashboard.rs against a real `keyward serve` with the
simulated upstream:

    python dashboard.py SCENARIO FIXTURE_JSON

FIXTURE_JSON holds the server's URL (on `localhost`, the public URL), the users the
Rust side created, and the screenshot folder. A scenario raises (non-zero exit, the
reason on stderr) when the dashboard does not do what it must; on success it prints
one JSON object for the Rust side to check against the server.
"""

import base64
import hmac
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request

os.environ.setdefault("SE_OFFLINE", "true")  # never download a driver: use Debian's

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

PASSWORD = "correct horse battery staple 42"


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("KEYWARD_TEST_CHROMIUM", "/usr/bin/chromium")
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
        "--no-first-run",
        "--password-store=basic",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(
        executable_path=os.environ.get("KEYWARD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_window_size(1280, 800)
    return driver


def totp(secret, at=None):
    """RFC 6238 code (SHA-1, 6 digits, 30 s), computed here, not by keyward."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((at if at is not None else time.time()) // 30)
    digest = hmac.new(key, struct.pack(">Q", counter), "sha1").digest()
    offset = digest[-1] & 15
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}"


def gone(element):
    """Whether `element` left the document. Chromium may answer a question
    about a node of the page being replaced with a plain inspector error
    ("Node with given id does not belong to the document") rather than a
    stale-element one: that means gone too."""
    try:
        element.is_enabled()
        return False
    except WebDriverException:  # StaleElementReferenceException is one
        return True


class Dashboard:
    def __init__(self, fixture, driver=None):
        self.url = fixture["url"]
        self.shots = fixture.get("screenshots")
        self.driver = driver or browser()

    def go(self, path):
        self.driver.get(self.url + path)
        return self

    def path(self):
        current = self.driver.current_url
        assert current.startswith(self.url), current
        return current[len(self.url) :].split("?")[0]

    def find(self, css):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def heading(self):
        return self.find("h1").text

    def fill(self, fields):
        for name, value in fields.items():
            element = self.find(f"[name='{name}']")
            if element.tag_name == "select":
                from selenium.webdriver.support.select import Select

                Select(element).select_by_value(value)
            else:
                element.clear()
                element.send_keys(value)

    def submit(self, form_css):
        self.click_to_load(self.find(form_css + " button[type='submit']"))

    def click_to_load(self, element, confirm=False):
        """Clicks something that loads a new page (accepting the confirm()
        dialog first when it opens one) and waits until the new page is there:
        a click returns before the navigation it starts has finished."""
        old = self.find("html")
        element.click()
        if confirm:
            self.accept_confirmation()
        WebDriverWait(self.driver, 10).until(lambda _: gone(old))

    def sign_in(self, email, password=PASSWORD):
        self.go("/sign-in")
        self.fill({"email": email, "password": password})
        self.submit("form[action='/sign-in']")

    def fetch(self, method, path, body=None):
        """A same-origin fetch from the page (as the page's own script would)."""
        script = """
            const [method, path, body, done] = arguments;
            fetch(path, {method, credentials: 'same-origin',
                         headers: {'content-type': 'application/json'},
                         body: body === null ? undefined : JSON.stringify(body)})
              .then(async r => done({status: r.status, body: await r.json().catch(() => null)}))
              .catch(e => done({status: 0, body: String(e)}));
        """
        return self.driver.execute_async_script(script, method, path, body)

    def wait_for_text(self, css, text):
        """Waits until the element `css` holds `text`, across the page loads
        that a script or a form starts (elements of the old page go stale)."""
        WebDriverWait(
            self.driver,
            10,
            # A node of the page being replaced: stale, missing, or (Chromium)
            # an inspector error that it "does not belong to the document".
            ignored_exceptions=(WebDriverException,),
        ).until(lambda _: text in self.find(css).text)

    def accept_confirmation(self):
        """Accepts a confirm() dialog if the click opened one."""
        try:
            WebDriverWait(self.driver, 1).until(lambda drv: drv.switch_to.alert).accept()
        except Exception:  # no dialog: nothing to accept
            pass

    def screenshot(self, name):
        if self.shots:
            os.makedirs(self.shots, exist_ok=True)
            self.driver.save_screenshot(os.path.join(self.shots, name + ".png"))

    def console_errors(self):
        return [e for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]

    def quit(self):
        self.driver.quit()


def gateway_call(url, key):
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
        ).encode(),
        headers={"authorization": "Bearer " + key, "content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def enrol_totp(d):
    """TOTP for the signed-in user through the API the security page uses."""
    started = d.fetch("POST", "/auth/totp", {})
    assert started["status"] == 200, started
    secret = started["body"]["secret"]
    confirmed = d.fetch("POST", "/auth/totp/confirm", {"code": totp(secret)})
    assert confirmed["status"] == 200, confirmed
    return secret


def key_lifecycle(fixture):
    """Sign in with password and TOTP; create a key with restrictions and a budget;
    copy its secret; call the gateway with it; revoke it; the next call is refused."""
    d = Dashboard(fixture)
    owner = fixture["owner"]
    d.sign_in(owner)
    assert d.path() == "/", d.driver.current_url
    secret = enrol_totp(d)
    d.click_to_load(d.find("form[action='/sign-out'] button"))
    assert d.path() == "/sign-in"

    d.sign_in(owner)
    assert d.path() == "/sign-in/second-factor", d.driver.current_url
    d.screenshot("sign-in-second-factor")
    # The enrolment used this 30-second step; a code is never accepted twice,
    # so sign in with the next step's (the server allows one step of drift).
    d.fill({"totp": totp(secret, time.time() + 30)})
    d.submit("form[action='/sign-in/second-factor']:has(#totp)")
    assert d.path() == "/", d.driver.current_url

    d.go("/keys/new")
    d.fill(
        {
            "name": "browser key",
            "project": "web",
            "endpoints": "chat-only",
            "models": "gpt-4o-mini",
            "rpm": "100",
            "budget_usd": "5",
        }
    )
    d.submit("form[action='/keys']")
    assert "you will not see it again" in d.find("main").text
    d.screenshot("key-created")
    d.find("[data-copy]").click()
    key = d.find("#secret").get_attribute("value")
    assert key.startswith("kw"), key
    WebDriverWait(d.driver, 10).until(lambda _: d.find(".copied").text != "")

    assert gateway_call(fixture["url"], key) == 200
    d.click_to_load(d.find("main a[href^='/keys/']"))
    key_page = d.path()
    assert d.heading() == "browser key"
    assert "never" not in d.find("dl").text.split("Last used")[1].split("\n")[1]
    assert "gpt-4o-mini" in d.find("dl").text
    d.screenshot("key")

    # An ephemeral token minted on the key's page: shown once, then listed under
    # the key, usable, and ended with it (checked after the revocation below).
    d.fill({"ttl_minutes": "10"})
    d.submit(f"form[action='{key_page}/ephemeral']")
    assert "you will not see it again" in d.find("main").text
    token = d.find("#secret").get_attribute("value")
    assert token.startswith("kwe_"), token
    d.click_to_load(d.find(f"main a[href='{key_page}']"))
    assert "Live tokens: 1" in d.find("main").text, d.find("main").text
    assert gateway_call(fixture["url"], token) == 200

    # The key's budget, with its bar, on the budgets page.
    d.go("/budgets")
    budget = d.find(f"section.budget-status:has(h2 a[href='{key_page}'])")
    bar = budget.find_element(By.CSS_SELECTOR, "progress")
    label = budget.find_element(By.CSS_SELECTOR, f"label[for='{bar.get_attribute('id')}']")
    assert "of $5.00 per month" in label.text and "in flight" in label.text, label.text
    assert bar.get_attribute("max") == "100", bar.get_attribute("outerHTML")
    assert "50%" in budget.text and "100%" in budget.text, budget.text
    assert budget.find_elements(By.CSS_SELECTOR, "form[action='/budgets/delete'] button")
    d.screenshot("budgets-key")

    # The request on the usage chart and in the table (the last 24 hours, by
    # hour), and in the CSV export.
    d.go("/usage?range=24h&group_by=key")
    titles = [t.get_attribute("textContent") for t in d.find_all("svg.chart rect title")]
    assert any("browser key: $" in t for t in titles), titles
    assert any("browser key: " in t and "$" not in t for t in titles), "tokens chart: %s" % titles
    row = d.find(f"main table tr:has(a[href='{key_page}'])")
    cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
    assert cells[0] == "browser key" and cells[1] == "1", cells
    d.screenshot("usage-key")
    export = d.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch('/usage.csv?range=24h&group_by=key', {credentials: 'same-origin'})
          .then(async r => done({status: r.status, body: await r.text(),
                                 disposition: r.headers.get('content-disposition')}))
          .catch(e => done({status: 0, body: String(e)}));
        """
    )
    assert export["status"] == 200, export
    assert export["disposition"].startswith("attachment; filename="), export
    lines = export["body"].splitlines()
    assert lines[0].startswith("start,start_ms,key,name,requests"), lines
    assert any(",browser key,1," in line for line in lines[1:]), lines
    d.go(key_page)

    d.click_to_load(d.find("form[action$='/revoke'] button"), confirm=True)
    d.wait_for_text("dl", "revoked")
    assert d.path() == key_page
    assert gateway_call(fixture["url"], key) == 401
    assert gateway_call(fixture["url"], token) == 401, "a token dies with its key"
    errors = d.console_errors()
    assert not errors, errors
    d.quit()
    return {"key_page": key_page}


def boundaries(fixture):
    """A member cannot reach another organization's key by editing the URL; a
    viewer sees no create or revoke buttons, and the API refuses anyway."""
    d = Dashboard(fixture)
    d.sign_in(fixture["member"])
    d.go("/keys/" + fixture["other_org_key"])
    assert "not found" in d.find("main").text.lower(), d.find("main").text
    assert fixture["other_org_key_name"] not in d.driver.page_source
    d.go("/keys")
    assert fixture["other_org_key_name"] not in d.find("main").text
    d.click_to_load(d.find("form[action='/sign-out'] button"))

    d.sign_in(fixture["viewer"])
    d.go("/keys")
    assert d.find_all("a[href='/keys/new']") == [], "a viewer sees no create button"
    d.go("/keys/" + fixture["own_key"])
    assert d.heading() == fixture["own_key_name"], d.find("main").text
    assert d.find_all("form[action$='/revoke']") == [], "a viewer sees no revoke button"
    refused = d.fetch("POST", "/api/v1/keys/" + fixture["own_key"] + "/revoke")
    assert refused["status"] == 403, refused
    # The 404 and the 403 above are the point; anything else is a fault.
    errors = [e for e in d.console_errors() if e.get("source") != "network"]
    assert not errors, errors
    d.quit()
    return {"viewer_revoke_status": refused["status"]}


def passkey(fixture):
    """Enrol a passkey on the security page with Chromium's virtual authenticator
    (the WebAuthn domain of the DevTools protocol, through WebDriver), then sign in
    with the password and the passkey."""
    from selenium.webdriver.common.virtual_authenticator import VirtualAuthenticatorOptions

    d = Dashboard(fixture)
    options = VirtualAuthenticatorOptions()
    options.protocol = VirtualAuthenticatorOptions.Protocol.CTAP2
    options.transport = VirtualAuthenticatorOptions.Transport.USB
    options.has_resident_key = False
    options.has_user_verification = True
    options.is_user_verified = True
    d.driver.add_virtual_authenticator(options)
    d.sign_in(fixture["owner"])
    d.go("/security")
    add = d.find("[data-passkey-register]")
    d.find(add.get_attribute("data-name")).send_keys("virtual key")
    add.click()
    d.wait_for_text("main", "virtual key")
    assert len(d.driver.get_credentials()) == 1
    d.screenshot("security-passkey")
    d.click_to_load(d.find("form[action='/sign-out'] button"))

    d.sign_in(fixture["owner"])
    assert d.path() == "/sign-in/second-factor", d.driver.current_url
    d.find("[data-passkey-sign-in]").click()
    WebDriverWait(d.driver, 10).until(lambda _: d.path() == "/")
    assert d.heading() == "Overview"
    errors = d.console_errors()
    assert not errors, errors
    d.quit()
    return {"credentials": 1}


def log_out_everywhere(fixture):
    """Two browsers signed in as the same person: "Log out everywhere" in one; the
    other's next navigation lands on the sign-in page."""
    laptop, phone = Dashboard(fixture), Dashboard(fixture)
    for d in (laptop, phone):
        d.sign_in(fixture["owner"])
        assert d.path() == "/", d.driver.current_url
    laptop.go("/security")
    buttons = [b for b in laptop.find_all("button") if b.text == "Log out everywhere"]
    assert len(buttons) == 1, [b.text for b in laptop.find_all("button")]
    laptop.click_to_load(buttons[0], confirm=True)
    WebDriverWait(laptop.driver, 10).until(lambda _: laptop.path() == "/sign-in")
    phone.go("/keys")
    assert phone.path() == "/sign-in", phone.driver.current_url
    laptop.quit()
    phone.quit()
    return {"phone": "signed out"}


PAGES = [
    ("overview", "/"),
    ("keys", "/keys"),
    ("key-new", "/keys/new"),
    ("usage", "/usage"),
    ("budgets", "/budgets"),
    ("leaks", "/leaks"),
    ("activity", "/activity"),
    ("security", "/security"),
    ("members", "/members"),
    ("settings", "/settings"),
]


def csp_of(url, cookie):
    """The Content-Security-Policy header of a page, fetched with the session."""
    request = urllib.request.Request(url, headers={"cookie": cookie})
    with urllib.request.urlopen(request) as response:
        return response.headers.get("content-security-policy")


def every_page(fixture):
    """Each page answers, with no console error or CSP report, and is photographed
    at 1280x800; the sign-in page too."""
    d = Dashboard(fixture)
    d.go("/sign-in")
    d.screenshot("sign-in")
    d.sign_in(fixture["owner"])
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in d.driver.get_cookies())
    seen = {}
    for name, path in PAGES:
        d.go(path)
        seen[name] = {"path": d.path(), "title": d.heading(), "csp": csp_of(d.url + path, cookie)}
        d.screenshot(name)
    errors = d.console_errors()
    assert not errors, errors
    d.quit()
    return {"pages": seen}


SCENARIOS = {
    f.__name__: f for f in [key_lifecycle, boundaries, every_page, passkey, log_out_everywhere]
}

if __name__ == "__main__":
    scenario, fixture = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(SCENARIOS[scenario](fixture)))
