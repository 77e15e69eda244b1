export * from './config';
export { estimateGuessability } from './guessability';
