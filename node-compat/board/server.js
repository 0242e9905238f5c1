#!/usr/bin/env node
'use strict';
// The real Bull Board (@bull-board/api + @bull-board/express) for bullwait's queues, against the
// same Redis, database and prefix as the Python side, configured by the same variables:
//   REDIS_URL | REDIS_HOST, REDIS_PORT, REDIS_QUEUE_DB; REDIS_USERNAME, REDIS_PASSWORD,
//   REDIS_TLS_CA_FILE; BULLMQ_PREFIX; BULLWAIT_QUEUE_NAMES
// and its own:
//   BULL_BOARD_USER, BULL_BOARD_PASSWORD  basic-auth credentials (required, not blank ...)
//   BULL_BOARD_AUTH=off                   ... unless auth is switched off explicitly
//   BULL_BOARD_HOST (127.0.0.1), BULL_BOARD_PORT (3001), BULL_BOARD_BASE_PATH (/admin/queues)
//   BULL_BOARD_ALLOWED_HOSTS              extra Host names it answers to (loopback always)
//   BULL_BOARD_READ_ONLY=true             no retries/cleans/pauses, and no queue meta written
//
// A browser sends the operator's cached basic-auth credentials with any request a web page
// makes, and a POST with a text/plain or form body needs no CORS preflight. So every
// state-changing request must be JSON if it has a body (a POST always) and, when the browser
// says where it came from (Origin, else Referer), come from the board's own origin. Body-less
// PUT/PATCH/DELETE (the board UI's buttons) cannot cross sites without a preflight, which this
// server never grants. The Host check stops DNS rebinding, where an attacker's name resolves
// to this board and so looks same-origin.
const crypto = require('node:crypto');
const express = require('express');
const { Queue } = require('bullmq');
const { createBullBoard } = require('@bull-board/api');
const { BullMQAdapter } = require('@bull-board/api/bullMQAdapter');
const { ExpressAdapter } = require('@bull-board/express');
const { ConfigError, loadConfig, createRedis, describeRedis, runMain } = require('../lib/config');

const TRUE = new Set(['1', 'true', 'yes', 'on']);
const FALSE = new Set(['0', 'false', 'no', 'off', '']);

function boolEnv(env, name, fallback) {
  const raw = env[name];
  if (raw === undefined) return fallback;
  const v = raw.trim().toLowerCase();
  if (TRUE.has(v)) return true;
  if (FALSE.has(v)) return false;
  throw new ConfigError(`${name}: must be true or false (got ${JSON.stringify(raw)})`);
}

function boardSettings(env = process.env) {
  const authRaw = (env.BULL_BOARD_AUTH || 'on').trim().toLowerCase();
  if (authRaw !== 'on' && authRaw !== 'off') {
    throw new ConfigError(`BULL_BOARD_AUTH: must be on or off (got ${JSON.stringify(env.BULL_BOARD_AUTH)})`);
  }
  const user = env.BULL_BOARD_USER || '';
  const password = env.BULL_BOARD_PASSWORD || '';
  if (authRaw === 'on' && (!user || !password)) {
    throw new ConfigError('refusing to start without BULL_BOARD_USER and BULL_BOARD_PASSWORD (set both, or BULL_BOARD_AUTH=off to run without a login)');
  }
  if (authRaw === 'on') {
    for (const [name, value] of [['BULL_BOARD_USER', user], ['BULL_BOARD_PASSWORD', password]]) {
      if (!value.trim()) {
        throw new ConfigError(`${name} is blank: set a real value, or BULL_BOARD_AUTH=off to run without a login`);
      }
    }
  }
  const port = Number(env.BULL_BOARD_PORT || 3001);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(`BULL_BOARD_PORT: must be a port number (got ${JSON.stringify(env.BULL_BOARD_PORT)})`);
  }
  const basePath = (env.BULL_BOARD_BASE_PATH || '/admin/queues').replace(/\/+$/, '');
  if (!basePath.startsWith('/')) throw new ConfigError('BULL_BOARD_BASE_PATH: must start with /');
  const host = env.BULL_BOARD_HOST || '127.0.0.1';
  return {
    auth: authRaw === 'on' ? { user, password } : null,
    host,
    port,
    basePath,
    allowedHosts: allowedHosts(env.BULL_BOARD_ALLOWED_HOSTS || '', host),
    readOnly: boolEnv(env, 'BULL_BOARD_READ_ONLY', false),
  };
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '::1']);
const WILDCARD_BINDS = new Set(['0.0.0.0', '::', '']);

/** Host names (no port) the board answers to besides loopback: the configured ones and a specific bind address. */
function allowedHosts(raw, bindHost) {
  const names = raw.split(',').map((h) => h.trim().toLowerCase()).filter(Boolean);
  for (const name of names) {
    if (/[\s/:@]/.test(name) && !name.startsWith('[')) {
      throw new ConfigError(
        `BULL_BOARD_ALLOWED_HOSTS: ${JSON.stringify(name)} is not a host name (list names without scheme or port)`,
      );
    }
  }
  if (!WILDCARD_BINDS.has(bindHost)) names.push(bindHost.toLowerCase());
  return new Set(names.map((n) => n.replace(/^\[|\]$/g, '')));
}

/** The host name of a Host header value (`name:port`, `[v6]:port`), lower case, or null if malformed. */
function hostName(value) {
  if (!value) return null;
  try {
    return new URL(`http://${value}`).hostname.toLowerCase().replace(/^\[|\]$/g, '');
  } catch {
    return null;
  }
}

function isLoopback(name) {
  return LOOPBACK_NAMES.has(name) || /^127\.\d+\.\d+\.\d+$/.test(name);
}

function refuse(res, status, message) {
  res.status(status).type('text/plain').send(`${message}\n`);
}

function hostGuard(allowed) {
  return (req, res, next) => {
    const name = hostName(req.headers.host);
    if (name && (isLoopback(name) || allowed.has(name))) return next();
    refuse(res, 421, 'this board does not answer to that Host name: add it to BULL_BOARD_ALLOWED_HOSTS');
  };
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** The `host[:port]` of an Origin or Referer value, or null for `null`, opaque or malformed ones. */
function originHost(value) {
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.host.toLowerCase() : null;
  } catch {
    return null;
  }
}

function hasBody(req) {
  return req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] || 0) > 0;
}

function isJson(req) {
  const type = (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  return type === 'application/json';
}

function sameOriginWrites() {
  return (req, res, next) => {
    if (SAFE_METHODS.has(req.method)) return next();
    if ((req.method === 'POST' || hasBody(req)) && !isJson(req)) {
      return refuse(res, 415, 'refused: a state-changing request with a body must be Content-Type: application/json');
    }
    const source = req.headers.origin !== undefined ? req.headers.origin : req.headers.referer;
    if (source !== undefined && originHost(source) !== String(req.headers.host || '').toLowerCase()) {
      return refuse(res, 403, 'refused: cross-site request (Origin/Referer is not this board); '
        + 'use the board itself or a client without a browser');
    }
    return next();
  };
}

function sameSecret(a, b) {
  const ha = crypto.createHash('sha256').update(a).digest();
  const hb = crypto.createHash('sha256').update(b).digest();
  return crypto.timingSafeEqual(ha, hb);
}

function basicAuth({ user, password }) {
  return (req, res, next) => {
    const header = req.headers.authorization || '';
    const [scheme, encoded] = header.split(' ');
    if (scheme === 'Basic' && encoded) {
      const decoded = Buffer.from(encoded, 'base64').toString('utf8');
      const sep = decoded.indexOf(':');
      const okUser = sameSecret(decoded.slice(0, sep), user);
      const okPass = sameSecret(decoded.slice(sep + 1), password);
      if (sep >= 0 && okUser && okPass) return next();
    }
    res.set('WWW-Authenticate', 'Basic realm="Bull Board", charset="UTF-8"');
    res.status(401).send('authentication required');
  };
}

/**
 * One Redis connection for every queue of the board, so an unreachable Redis costs one line
 * per reconnect attempt (not a stack trace per queue and attempt, as bullmq prints errors
 * nobody listens to).
 */
function sharedConnection(config, log = (line) => process.stderr.write(`${line}\n`)) {
  const where = describeRedis(config.redis);
  const client = createRedis(config.redis, {
    // bullmq's own default for the connections it makes: 1 s at first, growing to 20 s.
    retryStrategy: (times) => Math.max(Math.min(Math.exp(times), 20000), 1000),
  });
  let lastError = null;
  let down = false;
  client.on('error', (err) => {
    lastError = err;
    down = true;
    log(`bull-board: redis ${where} unreachable (${firstLine(err)}); retrying`);
  });
  client.on('ready', () => {
    if (down) log(`bull-board: redis ${where} reachable again`);
    down = false;
  });
  // Each queue forwards the connection's errors: those are logged above already.
  const queueError = (name) => (err) => {
    if (err !== lastError) log(`bull-board: queue ${name}: ${firstLine(err)}`);
  };
  return { client, queueError };
}

function firstLine(err) {
  return String((err && (err.message || err.code)) || err).split('\n')[0];
}

function openQueues(config, readOnly, connection) {
  return config.queues.map((q) => {
    if (q.active.includes(':')) {
      throw new ConfigError(
        `queue ${JSON.stringify(q.active)} has a colon, which Node bullmq 6 (and so Bull Board) refuses; ` +
          'run `bullwait migrate-legacy` and use BULLWAIT_QUEUE_NAMES=current',
      );
    }
    // skipMetasUpdate: a bullmq Queue otherwise writes `version` and `opts.maxLenEvents` into
    // <prefix>:<queue>:meta as soon as it connects; a read-only board must write nothing.
    const options = { connection: connection.client, prefix: config.prefix, skipMetasUpdate: readOnly };
    const queue = new Queue(q.active, options);
    queue.on('error', connection.queueError(q.active));
    return queue;
  });
}

function buildApp(config, board) {
  const connection = sharedConnection(config);
  const queues = openQueues(config, board.readOnly, connection);
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(board.basePath);
  createBullBoard({
    queues: queues.map((queue) => new BullMQAdapter(queue, { readOnlyMode: board.readOnly })),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'bullwait queues' } },
  });
  const app = express();
  app.disable('x-powered-by');
  app.use(hostGuard(board.allowedHosts));
  app.get('/healthz', (_req, res) => res.json({ ok: true }));
  app.use(board.basePath, sameOriginWrites());
  if (board.auth) app.use(board.basePath, basicAuth(board.auth));
  app.use(board.basePath, serverAdapter.getRouter());
  return { app, queues, client: connection.client };
}

async function main() {
  const config = loadConfig();
  const board = boardSettings();
  const { app, queues, client } = buildApp(config, board);
  const server = await new Promise((resolve, reject) => {
    const s = app.listen(board.port, board.host, () => resolve(s));
    s.on('error', (err) => reject(new Error(`cannot listen on ${board.host}:${board.port}: ${err.code || err.message}`)));
  });
  const addr = server.address();
  process.stdout.write(
    `bull board listening on http://${addr.address}:${addr.port}${board.basePath} ` +
      `(redis ${describeRedis(config.redis)}, prefix ${config.prefix}, queues ${queues.map((q) => q.name).join(',')}, ` +
      `auth ${board.auth ? 'basic' : 'OFF'}, read-only ${board.readOnly})\n`,
  );
  await new Promise((resolve) => {
    const stop = () => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  server.close();
  await Promise.all(queues.map((q) => q.close()));
  client.disconnect();
  return 0;
}

if (require.main === module) runMain('bull-board', main);
module.exports = { boardSettings, buildApp };
