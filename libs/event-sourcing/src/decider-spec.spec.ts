import { KeelError } from '@keel/contracts';
import { Decider } from './decider';
import { deciderSpec } from './decider-spec';

type Event = { type: 'light.switched_on' | 'light.switched_off'; data: Record<string, never> };
type Command = { type: 'on' } | { type: 'off' } | { type: 'break' };
const lamp: Decider<boolean, Command, Event> = {
  initialState: () => false,
  evolve: (_, e) => e.type === 'light.switched_on',
  decide(command, on) {
    if (command.type === 'break') throw new KeelError('invalid_transition', 'Lamps do not break on command.');
    if (command.type === 'on') return on ? [] : [{ type: 'light.switched_on', data: {} }];
    return on ? [{ type: 'light.switched_off', data: {} }] : [];
  },
};
const { given } = deciderSpec(lamp);
const on: Event = { type: 'light.switched_on', data: {} };

describe('deciderSpec', () => {
  it('folds the given events into the state', () => {
    expect(given().state).toBe(false);
    expect(given(on).state).toBe(true);
  });

  it('passes when the command decides the expected events, and fails otherwise', () => {
    given().when({ type: 'on' }).then([on]);
    expect(() => given(on).when({ type: 'on' }).then([on])).toThrow();
    expect(() => given().when({ type: 'on' }).thenNothing()).toThrow();
    given(on).when({ type: 'on' }).thenNothing();
  });

  it('checks a refusal by code and message, and fails on another code, another message or no refusal', () => {
    given().when({ type: 'break' }).then({ error: 'invalid_transition', message: /do not break/ });
    given().when({ type: 'break' }).thenRefused('invalid_transition', 'on command');
    expect(() => given().when({ type: 'break' }).thenRefused('conflict')).toThrow(/invalid_transition/);
    expect(() => given().when({ type: 'break' }).thenRefused('invalid_transition', /explode/)).toThrow(/does not match/);
    expect(() => given().when({ type: 'on' }).thenRefused('invalid_transition')).toThrow(/expected a refusal/);
  });

  it('fails with the refusal when events were expected', () => {
    expect(() => given().when({ type: 'break' }).then([on])).toThrow(/refused: invalid_transition/);
  });
});
