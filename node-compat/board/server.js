#!/usr/bin/env node
'use strict';
// The real Bull Board (@bull-board/api + @bull-board/express) for bullwait's queues, against the
// same Redis, database and prefix as the Python side, configured by the same variables:
//   REDIS_URL | REDIS_HOST, REDIS_PORT, REDIS_QUEUE_DB; REDIS_USERNAME, REDIS_PASSWORD,
//   REDIS_TLS_CA_FILE; BULLMQ_PREFIX; BULLWAIT_QUEUE_NAMES
// and its own:
//   BULL_BOARD_USER, BULL_BOARD_PASSWORD  basic-auth credentials (required ...)
//   BULL_BOARD_AUTH=off                   ... unless auth is switched off explicitly
//   BULL_BOARD_HOST (127.0.0.1), BULL_BOARD_PORT (3001), BULL_BOARD_BASE_PATH (/admin/queues)
//   BULL_BOARD_READ_ONLY=true             no retries/cleans/pauses, and no queue meta written
const crypto = require('node:crypto');
const express = require('express');
const { Queue } = require('bullmq');
const { createBullBoard } = require('@bull-board/api');
const { BullMQAdapter } = require('@bull-board/api/bullMQAdapter');
const { ExpressAdapter } = require('@bull-board/express');
const { ConfigError, loadConfig, describeRedis, runMain } = require('../lib/config');

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
  const port = Number(env.BULL_BOARD_PORT || 3001);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(`BULL_BOARD_PORT: must be a port number (got ${JSON.stringify(env.BULL_BOARD_PORT)})`);
  }
  const basePath = (env.BULL_BOARD_BASE_PATH || '/admin/queues').replace(/\/+$/, '');
  if (!basePath.startsWith('/')) throw new ConfigError('BULL_BOARD_BASE_PATH: must start with /');
  return {
    auth: authRaw === 'on' ? { user, password } : null,
    host: env.BULL_BOARD_HOST || '127.0.0.1',
    port,
    basePath,
    readOnly: boolEnv(env, 'BULL_BOARD_READ_ONLY', false),
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

function openQueues(config, readOnly) {
  return config.queues.map((q) => {
    if (q.active.includes(':')) {
      throw new ConfigError(
        `queue ${JSON.stringify(q.active)} has a colon, which Node bullmq 6 (and so Bull Board) refuses; ` +
          'run `bullwait migrate-legacy` and use BULLWAIT_QUEUE_NAMES=current',
      );
    }
    // skipMetasUpdate: a bullmq Queue otherwise writes `version` and `opts.maxLenEvents` into
    // <prefix>:<queue>:meta as soon as it connects; a read-only board must write nothing.
    return new Queue(q.active, { connection: config.connection, prefix: config.prefix, skipMetasUpdate: readOnly });
  });
}

function buildApp(config, board) {
  const queues = openQueues(config, board.readOnly);
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(board.basePath);
  createBullBoard({
    queues: queues.map((queue) => new BullMQAdapter(queue, { readOnlyMode: board.readOnly })),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'bullwait queues' } },
  });
  const app = express();
  app.disable('x-powered-by');
  app.get('/healthz', (_req, res) => res.json({ ok: true }));
  if (board.auth) app.use(board.basePath, basicAuth(board.auth));
  app.use(board.basePath, serverAdapter.getRouter());
  return { app, queues };
}

async function main() {
  const config = loadConfig();
  const board = boardSettings();
  const { app, queues } = buildApp(config, board);
  const server = await new Promise((resolve, reject) => {
    const s = app.listen(board.port, board.host, () => resolve(s));
    s.on('error', (err) => reject(new Error(`cannot listen on ${board.host}:${board.port}: ${err.code || err.message}`)));
  });
  const addr = server.address();
  process.stdout.write(
    `bull board listening on http://${addr.address}:${addr.port}${board.basePath} ` +
      `(redis ${describeRedis(config.connection)}, prefix ${config.prefix}, queues ${queues.map((q) => q.name).join(',')}, ` +
      `auth ${board.auth ? 'basic' : 'OFF'}, read-only ${board.readOnly})\n`,
  );
  await new Promise((resolve) => {
    const stop = () => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  server.close();
  await Promise.all(queues.map((q) => q.close()));
  return 0;
}

if (require.main === module) runMain('bull-board', main);
module.exports = { boardSettings, buildApp };
