// Drives headless Chromium (Debian's /usr/bin/chromium) through the pages with
// playwright-core: sign in, find the project, read a deployment's log, press Rollback,
// see the current version change. Prints one JSON line: what it saw, and any JavaScript
// error or failed request. Every page it loads is searched for the env var values given
// (they must never appear). Usage: node browser.mjs URL TOKEN ARTIFACTS_DIR [VALUE ...]
import { createRequire } from "node:module";

// playwright-core lives in tests/node (the project's npm fixtures), not beside this file.
const { chromium } = createRequire(new URL("../node/package.json", import.meta.url))("playwright-core");

const [url, token, artifacts, ...hidden] = process.argv.slice(2);
const problems = [];
const seen = { pagesSearched: 0, valuesFound: [] };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (err) => problems.push(`pageerror: ${err.message}`));
  page.on("console", (msg) => { if (msg.type() === "error") problems.push(`console: ${msg.text()}`); });
  page.on("requestfailed", (req) => problems.push(`requestfailed: ${req.url()}`));
  page.on("load", async () => {
    try {
      const html = await page.content();
      seen.pagesSearched += 1;
      for (const value of hidden) if (html.includes(value)) seen.valuesFound.push(`${page.url()}: ${value}`);
    } catch (err) {
      if (!String(err).includes("navigat")) problems.push(`search: ${err}`);
    }
  });
  const shot = (name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });

  await page.goto(url + "/");
  seen.loginAsksToken = await page.getByLabel("Admin token").isVisible();
  seen.loginShowsProject = (await page.content()).includes("octo-org/demo");
  await shot("login");

  await page.getByLabel("Admin token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(url + "/");
  await shot("projects");
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "slipway_session");
  seen.cookie = session && { httpOnly: session.httpOnly, sameSite: session.sameSite, isToken: session.value === token };

  await page.getByRole("link", { name: "demo" }).click();
  await page.waitForURL(url + "/projects/demo");
  const production = page.locator('tr[data-environment="production"]');
  seen.currentBefore = (await production.locator(".current-version").innerText()).trim();
  seen.previewBranch = await page.locator('tr[data-branch="feature/pages"]').count();
  await shot("project");

  await production.locator("td").nth(3).getByRole("link").click();
  await page.waitForURL(/\/deployments\//);
  seen.log = await page.locator("#log").innerText();
  seen.steps = await page.locator("tr[data-step]").count();
  seen.stepDurations = await page.locator("td.step-duration").allInnerTexts();
  await shot("deployment");

  await page.goBack();
  await page.waitForURL(url + "/projects/demo");
  await page.getByRole("button", { name: "Roll back production" }).click();
  await page.waitForURL(url + "/projects/demo");
  seen.currentAfter = (await page.locator('tr[data-environment="production"] .current-version').innerText()).trim();
  await shot("project-after-rollback");

  await page.getByRole("link", { name: "production" }).click();
  await page.waitForURL(/\/environments\/production/);
  seen.envvarNames = await page.locator("tr[data-envvar] td:first-child").allInnerTexts();
  await shot("environment");

  await page.goto(url + "/projects/demo");
  await page.getByRole("link", { name: "feature/pages" }).click();
  await page.waitForURL(/\/environments\/preview\?branch=/);
  seen.previewEnvvars = await page.locator("tr[data-envvar]").evaluateAll(
    (rows) => rows.map((r) => `${r.dataset.envvar}:${r.dataset.layer}`));
  await shot("environment-preview");

  // Keyboard: the skip link is the first thing Tab reaches, and it is visible then.
  await page.keyboard.press("Tab");
  seen.firstTab = await page.evaluate(() => document.activeElement && document.activeElement.textContent);

  // A forged post: a page that is not Slipway's submits a form at it with the browser's
  // session. about:blank has no origin of Slipway's (Origin: null); it must get a 403.
  const before = (await page.goto(url + "/projects/demo"),
    (await page.locator('tr[data-environment="production"] .current-version').innerText()).trim());
  await page.goto("about:blank");
  await page.setContent(
    `<form method="post" action="${url}/projects/demo/environments/production/rollback">` +
    `<input name="csrf" value="forged"></form>`);
  const quiet = problems.length;
  const [forged] = await Promise.all([
    page.waitForNavigation(),
    page.evaluate(() => document.forms[0].submit()),
  ]);
  seen.forgedStatus = forged.status();
  problems.splice(quiet);  // the refused post's 403 is expected, not a page error
  await page.goto(url + "/projects/demo");
  seen.forgedChanged = before !==
    (await page.locator('tr[data-environment="production"] .current-version').innerText()).trim();

  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(url + "/projects/demo");
  seen.narrowOverflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  await shot("project-narrow");
} catch (err) {
  problems.push(`script: ${err && err.stack ? err.stack : err}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ seen, problems }));
