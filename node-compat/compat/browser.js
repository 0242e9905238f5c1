#!/usr/bin/env node
'use strict';
// Headless Chromium (Debian's /usr/bin/chromium, never a downloaded browser) driven by
// playwright-core: log in to Bull Board with basic auth, open one queue, wait for a job id
// to appear, save a screenshot. Then promote that job from the board's page with a body-less
// PUT, as the board's UI does (the browser adds its Origin header: the board must accept it).
//   node compat/browser.js <board base url> <user> <password> <queue> <status> <job id> <png path> [<queue>,...]
// With the last argument, the board's overview page is opened first and must show each of those
// queue names. Prints {"found": true, "title": ..., "promote": <HTTP status>, "overview": [...]}
// on success; exits 1 with one line otherwise.
const { chromium } = require('playwright-core');
const { runMain } = require('../lib/config');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];

async function main() {
  const [base, user, password, queue, status, jobId, png, overview] = process.argv.slice(2);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true, timeout: 60000 });
  try {
    const context = await browser.newContext({ httpCredentials: { username: user, password }, viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    const listed = overview ? await overviewShows(page, base, overview.split(',')) : null;
    const url = `${base}/queue/${encodeURIComponent(queue)}?status=${status}`;
    const response = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 30000 });
    if (!response || response.status() !== 200) throw new Error(`GET ${url} answered ${response && response.status()}`);
    await page.getByText(jobId, { exact: false }).first().waitFor({ timeout: 30000 });
    await page.screenshot({ path: png, fullPage: true });
    const promote = await page.evaluate(async (target) => (await fetch(target, { method: 'PUT' })).status,
      `${base}/api/queues/${encodeURIComponent(queue)}/${encodeURIComponent(jobId)}/promote`);
    process.stdout.write(JSON.stringify({ found: true, title: await page.title(), url, promote, overview: listed }) + '\n');
  } finally {
    await browser.close();
  }
  return 0;
}

/** The names the overview page shows, once every one of `names` is on it. */
async function overviewShows(page, base, names) {
  const response = await page.goto(`${base}/`, { waitUntil: 'domcontentloaded', timeout: 30000 });
  if (!response || response.status() !== 200) throw new Error(`GET ${base}/ answered ${response && response.status()}`);
  for (const name of names) await page.getByText(name, { exact: true }).first().waitFor({ timeout: 30000 });
  return names;
}

runMain('browser', main);
