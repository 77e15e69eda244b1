import { EntityManager } from 'typeorm';
import { authEventTypes as A, ERASED, EventEnvelope, PositionedEvent } from '@keel/contracts';
import { Projection } from '@keel/projections';

/** Unqualified: the role's search_path is its schema, and a rebuild points it at the shadow schema. */
const TABLE = 'users';

/** Users for listings (single-user reads come from the log itself). */
export class UsersProjection implements Projection {
  readonly name = 'users';
  readonly contexts = ['auth'];
  /** Only users' events: sessions, keys, roles and the rest of auth are not its business. */
  readonly aggregateType = 'user';
  readonly tables = ['users'];

  async apply(m: EntityManager, events: PositionedEvent[]): Promise<void> {
    for (const { event } of events) {
      const e = event as EventEnvelope;
      if (e.aggregateType !== 'user') continue;
      const common = [e.aggregateId, e.aggregateVersion, e.occurredAt];
      switch (e.type) {
        case A.userCreated: {
          const d = e.data as { email: string; name: string; roles: string[] };
          await m.query(
            `INSERT INTO ${TABLE} (id, version, created_at, updated_at, tenant_id, email, name, roles, status)
             VALUES ($1, $2, $3, $3, $4, $5, $6, $7, 'active') ON CONFLICT (id) DO NOTHING`,
            [...common, e.tenantId, d.email, d.name, d.roles],
          );
          break;
        }
        case A.userDisabled:
        case A.userEnabled:
          await m.query(`UPDATE ${TABLE} SET status = $4, version = $2, updated_at = $3 WHERE id = $1 AND version < $2`, [
            ...common, e.type === A.userDisabled ? 'disabled' : 'active',
          ]);
          break;
        case A.userProfileUpdated:
          await m.query(`UPDATE ${TABLE} SET name = $4, version = $2, updated_at = $3 WHERE id = $1 AND version < $2`, [
            ...common, (e.data as { name: string }).name,
          ]);
          break;
        // Forgotten: what was personal reads "[erased]" (a rebuild gets the same: the key is gone).
        case A.userErased:
          await m.query(`UPDATE ${TABLE} SET email = $4, name = $4, roles = '{}', status = 'erased', version = $2, updated_at = $3 WHERE id = $1 AND version < $2`, [
            ...common, ERASED,
          ]);
          break;
        case A.userRolesChanged:
          await m.query(`UPDATE ${TABLE} SET roles = $4, version = $2, updated_at = $3 WHERE id = $1 AND version < $2`, [
            ...common, (e.data as { roles: string[] }).roles,
          ]);
          break;
        default:
          await m.query(`UPDATE ${TABLE} SET version = $2 WHERE id = $1 AND version < $2`, [e.aggregateId, e.aggregateVersion]);
      }
    }
  }
}
