// The owner's session list (/sessions): start times in the reader's time zone. Everything else on the page is
// plain forms that work without this script.
import { localizeTimes } from './labels.js';

localizeTimes();
