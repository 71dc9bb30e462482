/** The catalog's errors: a record that is not there, and a change its state refuses. */

export class NotFoundError extends Error {
  constructor(what: string, ref: string) {
    super(`${what} "${ref}" not found`);
    this.name = 'NotFoundError';
  }
}

export class ConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConflictError';
  }
}
