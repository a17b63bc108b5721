// Sign in with GitHub in headless Chromium: the sign-in page's button, GitHub's (the
// fake's) authorize redirect, back to Slipway, and what the person then sees. Prints one
// JSON line: what it saw, and any JavaScript error or failed request.
// Usage: node github_signin.mjs URL ARTIFACTS_DIR
import { createRequire } from "node:module";

const { chromium } = createRequire(new URL("../node/package.json", import.meta.url))("playwright-core");

const [url, artifacts] = process.argv.slice(2);
const problems = [];
const seen = {};

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

  await page.goto(url + "/");
  await page.getByRole("link", { name: "Sign in with GitHub" }).click();
  await page.waitForURL(url + "/");
  seen.signedInAs = (await page.locator("header.top").innerText()).includes("Signed in with GitHub as pusher");
  seen.projects = await page.locator("tbody tr td:first-child").allInnerTexts();
  await page.screenshot({ path: `${artifacts}/github-projects.png`, fullPage: true });
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "slipway_session");
  seen.cookie = session && { httpOnly: session.httpOnly, sameSite: session.sameSite, kind: session.value.slice(0, 3) };
  seen.stateCookieLeft = cookies.some((c) => c.name === "slipway_github_state");

  await page.getByRole("link", { name: "demo" }).click();
  await page.waitForURL(url + "/projects/demo");
  seen.promoteOffered = await page.getByRole("button", { name: "Promote" }).count() > 0;
  await page.screenshot({ path: `${artifacts}/github-project.png`, fullPage: true });
} catch (err) {
  problems.push(`script: ${err && err.stack ? err.stack : err}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify({ seen, problems }));
